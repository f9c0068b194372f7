"""Parity of the final action with `predict(deterministic=True)` under hypothesis-drawn observations."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from hypothesis import HealthCheck, given, settings, target

from . import check, spec
from .artifact import Artifact, ArtifactError
from .strategies import Batch
from .tolerance import RULE

if TYPE_CHECKING:
    from .model import Reference


@dataclass
class ParityStats:
    """What the parity clauses actually exercised, per clause ID."""
    observations: Counter = field(default_factory=Counter)
    out_of_bounds: Counter = field(default_factory=Counter)

    def record(self, clause_id: str, checked: int, out_of_bounds: int) -> None:
        self.observations[clause_id] += checked
        self.out_of_bounds[clause_id] += out_of_bounds


class Mismatch(AssertionError):
    def __init__(self, text: str):
        super().__init__(text)


def _row(values: np.ndarray) -> str:
    return "[" + ", ".join(repr(float(v)) for v in values) + "]"


def _worst(diff: np.ndarray) -> float:
    return float("nan") if np.isnan(diff).any() else float(diff.max())


def compare(reference: Reference, artifact: Artifact, obs: np.ndarray) -> str | None:
    """None when every row matches; else a description of the worst row."""
    expected = reference.predict(obs)
    obtained = artifact.final_action(obs)
    if obtained.shape != expected.shape:
        return (f"the final action has shape {obtained.shape}, but predict() returns "
                f"{expected.shape} for {len(obs)} observations")
    diff = np.abs(obtained - expected)
    # The noise term of the tolerance is costly: measure it only for rows the fixed term rejects.
    # NaN in either side must fail: compare with "not <=".
    tolerance = np.broadcast_to(reference.fixed_tolerance, diff.shape).copy()
    suspects = (~(diff <= tolerance)).any(axis=1)
    if suspects.any():
        tolerance[suspects] = reference.tolerance(obs[suspects])
    bad = ~(diff <= tolerance)
    if not bad.any():
        return None
    excess = np.where(np.isnan(diff), np.inf, diff / tolerance)
    worst = int(np.argmax(excess.max(axis=1)))
    mean = reference.mean(obs[worst:worst + 1])[0]
    return "\n".join([
        f"max |final - predict| = {_worst(diff[worst]):.3g} at row {worst} ({int(bad.any(axis=1).sum())} of {len(obs)} rows differ), "
        f"but must be <= tolerance {tolerance[worst].max():.3g} "
        f"(action_transform={artifact.transform})",
        f"  obs       = {_row(obs[worst])}",
        f"  predict   = {_row(expected[worst])}",
        f"  final     = {_row(obtained[worst])}",
        f"  |diff|    = {_row(diff[worst])}",
        f"  tolerance = {_row(tolerance[worst])}  ({RULE})",
        f"  pre-clip mean = {_row(mean)}  (action bounds low={_row(reference.low)}, "
        f"high={_row(reference.high)})",
    ])


LIKELY_CAUSES = (
    "Usual causes: the clamp to the action bounds is missing or uses other bounds "
    "(predict() clips the Gaussian mean); the declared action_transform, action_scale or "
    "action_offset does not reproduce predict()'s post-processing; the exported weights differ "
    "from the model's; the graph samples instead of taking the mean.")


def check_parity(clause: spec.Clause, reference: Reference, artifact: Artifact, strategy,
                 stats: ParityStats, reproduce: str, steer: bool = False) -> None:
    """Run the hypothesis search; fail the clause with the worst observation of the minimal
    example. With `steer`, hypothesis is also told to maximize the share of rows whose mean leaves
    the action bounds."""

    @settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=strategy)
    def parity_holds(batch: Batch) -> None:
        obs = batch.observations
        out_of_bounds = int((reference.overshoot(obs) > 0).sum())
        if steer:
            target(out_of_bounds / len(obs), label="share of rows whose mean leaves the bounds")
        stats.record(clause.id, len(obs), out_of_bounds)
        problem = compare(reference, artifact, obs)
        if problem:
            raise Mismatch(f"{problem}\n  drawn as {batch}")

    try:
        parity_holds()
    except Mismatch as mismatch:
        notes = [n for n in getattr(mismatch, "__notes__", []) if "reproduce_failure" in n]
        check.fail(clause, "\n".join([str(mismatch), f"Reproduce: {reproduce}", *notes,
                                      LIKELY_CAUSES]))
    except ArtifactError as exc:
        check.fail(clause, str(exc))
