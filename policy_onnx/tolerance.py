"""The parity tolerance rule (spec section 6), in one place.

An action element may differ from predict() by 1e-5 in action units (half the width of its
bounds; but never less than four float32 steps at the larger bound, where float32 cannot tell
values apart), plus a multiple of the oracle's own float32 rounding error at that observation.
A value that is not an action bounded by [low, high] (a score, a recurrent state) is judged
in its own units: 1e-5 times its magnitude, at least 1e-5.
"""

from __future__ import annotations

import numpy as np

ATOL = 1e-5
NOISE_FACTOR = 8.0
RESOLUTION_STEPS = 4  # float32 steps at the larger bound the first term allows at least
RULE = (f"|final - predict| <= {ATOL:g} x (high-low)/2 (at least {RESOLUTION_STEPS} float32 "
        f"steps at the bounds) + {NOISE_FACTOR:g} x |f32 - f64 reference|, per element")


def action_unit(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Half the width of the bounds, at least 1 (1 where unbounded): how far outside the
    bounds a mean lies is measured in these."""
    half_width = (np.asarray(high, dtype=np.float64) - np.asarray(low, dtype=np.float64)) / 2.0
    return np.where(np.isfinite(half_width), np.maximum(half_width, 1.0), 1.0)


def tolerance(low: np.ndarray, high: np.ndarray, rounding_noise: np.ndarray | float = 0.0):
    """Per element of a Box action bounded by [low, high]."""
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    half_width = (high - low) / 2.0
    larger = np.maximum(np.abs(low), np.abs(high))
    resolution = RESOLUTION_STEPS * np.spacing(np.where(np.isfinite(larger), larger, 0.0)
                                               .astype(np.float32)).astype(np.float64)
    fixed = np.where(np.isfinite(half_width), np.maximum(ATOL * half_width, resolution), ATOL)
    return fixed + NOISE_FACTOR * np.asarray(rounding_noise)


def magnitude_tolerance(values: np.ndarray, rounding_noise: np.ndarray | float = 0.0):
    """For values that are not bounded actions (scores, recurrent states): 1e-5 times their
    magnitude, at least 1e-5, plus the noise term."""
    return ATOL * np.maximum(np.abs(values), 1.0) + NOISE_FACTOR * np.asarray(rounding_noise)
