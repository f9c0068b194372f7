"""The parity tolerance rule (spec section "Tolerance"), in one place.

An artifact may differ from predict() by 1e-5 in normalized action units (half the width of the
action bounds, at least 1), plus a multiple of the oracle's own float32 rounding error at that
observation, measured as |float32 - float64| of the same computation.
"""

from __future__ import annotations

import numpy as np

ATOL = 1e-5
NOISE_FACTOR = 8.0
RULE = (f"|final - predict| <= {ATOL:g} x max(1, (high-low)/2) "
        f"+ {NOISE_FACTOR:g} x |f32 - f64 reference|, per element")


def action_unit(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    half_width = (np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)) / 2.0
    return np.where(np.isfinite(half_width), np.maximum(half_width, 1.0), 1.0)


def tolerance(low: np.ndarray, high: np.ndarray, rounding_noise: np.ndarray | float = 0.0):
    return ATOL * action_unit(low, high) + NOISE_FACTOR * np.asarray(rounding_noise)
