"""Parity of the final action with `predict(deterministic=True)` under hypothesis-drawn observations."""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, target

from . import check, engines, spec
from .check import row
from .artifact import Artifact, ArtifactError
from .decisions import mask_patterns
from .record import STATISTICS
from .strategies import FLOAT32_MAX, MAX_MAGNITUDE, Batch, rows_for
from .tolerance import RULE, magnitude_tolerance, tolerance

if TYPE_CHECKING:
    from .model import Reference


# The margin of a parity clause: per compared observation, the worst element's
# |final - predict| / tolerance (the tolerance the comparison applied: its fixed term, or the
# whole rule where the fixed term was exceeded, spec section 6), counted in decades; the last
# bin is beyond the tolerance (a rounding tie, excused, or a failure).
RATIO_EDGES = np.arange(-6, 1)  # log10 of the ratio: bins (.., 1e-6], (1e-6, 1e-5], ... (0.1, 1], (1, ..)
RATIO_BINS = ("<=1e-6", "1e-6..1e-5", "1e-5..1e-4", "1e-4..1e-3", "1e-3..0.01", "0.01..0.1",
              "0.1..1", ">1")
# The observation the worst ratio came from is kept up to this many elements (larger ones: its
# counterexample file, for a failure).
KEPT_OBSERVATION = 1024
# What each parity clause compared is kept up to this many rows and bytes (its first: the rows
# the searches found come first), for the PORT clauses; they run it in another engine for
# ENGINE_SECONDS of CPU time at most (what they compared is reported).
KEPT_ROWS = 4096
KEPT_BYTES = 8 * 2**20
ENGINE_SECONDS = 3.0
ENGINE_ROWS = 4096  # rows an engine runs at a time
# Batches an engine also runs the first kept rows in: sixteen rows alone (a robot alone), in
# pairs and threes, then a batch of 64, and one of each size the decision search found deciding
# something: a fault keyed to the batch size in that engine alone.
ENGINE_BATCH_SIZES = (1,) * 16 + (2,) * 8 + (3,) * 6 + (64,)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@dataclass
class Margin:
    """How close one parity clause came to failing, accumulated over its examples without
    keeping their rows: a histogram of the per-observation ratio, the worst ratio per action
    element and the row where the worst of all was; for discrete actions also the closest
    score gap between predict()'s choice and its runner-up (how near the draws came to a
    decision boundary of the model)."""
    histogram: np.ndarray = field(default_factory=lambda: np.zeros(len(RATIO_BINS), np.int64))
    worst: float = -1.0
    by_element: np.ndarray | None = None
    element: int | None = None
    row: dict | None = None  # observation, predict, final of the worst
    gap: float = math.inf  # discrete: the closest score gap, in the scores' units
    gap_tolerances: float = math.inf  # the same, in tie tolerances (spec section 6)
    gap_element: int | None = None
    gap_observation: list | None = None
    # What was drawn: per observation element the range the compared rows covered, beside the
    # declared bounds; for discrete actions how often predict() and the artifact made each
    # choice ("element:value").
    drawn_low: np.ndarray | None = None
    drawn_high: np.ndarray | None = None
    bounds: tuple | None = None
    chosen: Counter = field(default_factory=Counter)
    answered: Counter = field(default_factory=Counter)
    # Box actions that clip: per action element, in how many compared rows the pre-clip mean
    # left the bounds
    left_bounds: np.ndarray | None = None
    # recurrent rollouts: the worst ratio at each step of a rollout (index: the step)
    by_step: list = field(default_factory=list)

    def add(self, ratio: np.ndarray, obs: np.ndarray, expected: np.ndarray,
            obtained: np.ndarray, excused: np.ndarray | None = None) -> None:
        """`ratio` [B, elements] of compared rows (inf where either side is NaN); `excused`:
        elements judged rounding ties (in the histogram, but not the worst: they passed)."""
        if not len(ratio):
            return
        flat = obs.reshape(len(obs), -1)
        if flat.shape[1] <= KEPT_OBSERVATION:  # larger ones are not reported: not tracked
            low, high = flat.min(axis=0), flat.max(axis=0)
            self.drawn_low = low if self.drawn_low is None \
                else np.minimum(self.drawn_low, low)
            self.drawn_high = high if self.drawn_high is None \
                else np.maximum(self.drawn_high, high)
        with np.errstate(divide="ignore"):
            decade = np.log10(ratio.max(axis=1))
        self.histogram += np.bincount(np.searchsorted(RATIO_EDGES, decade),
                                      minlength=len(RATIO_BINS))
        judged = ratio if excused is None else np.where(excused, 0.0, ratio)
        per_element = judged.max(axis=0)
        self.by_element = per_element if self.by_element is None \
            else np.maximum(self.by_element, per_element)
        i, j = np.unravel_index(int(np.argmax(judged)), judged.shape)
        if judged[i, j] > self.worst:
            self.worst, self.element = float(judged[i, j]), int(j)
            self.row = {"observation": _kept(obs[i]), "predict": expected[i].tolist(),
                        "final": obtained[i].tolist()}

    def count_choices(self, expected: np.ndarray, obtained: np.ndarray) -> None:
        """Discrete actions [B, elements] of predict() and of the artifact."""
        for counter, actions in ((self.chosen, expected), (self.answered, obtained)):
            for j in range(actions.shape[1]):
                values, counts = np.unique(actions[:, j], return_counts=True)
                counter.update({f"{j}:{v:g}": int(n) for v, n in zip(values, counts)})

    def count_left_bounds(self, outside: np.ndarray) -> None:
        """Rows [B, elements] where the pre-clip mean lies outside the bounds."""
        counts = outside.sum(axis=0)
        self.left_bounds = counts if self.left_bounds is None else self.left_bounds + counts

    def add_step(self, step: int, ratio: np.ndarray) -> None:
        """The ratios [envs, elements] of one step of a rollout."""
        self.by_step += [-1.0] * (step + 1 - len(self.by_step))
        worst = float(ratio.max()) if ratio.size else -1.0
        self.by_step[step] = max(self.by_step[step], worst)

    def add_gaps(self, gaps: np.ndarray, allowed: np.ndarray, obs: np.ndarray) -> None:
        """Discrete actions: predict()'s score gap to its runner-up per row and element
        [B, elements] (inf where a choice has no rival) and the tie tolerance of each."""
        if not gaps.size:
            return
        with np.errstate(over="ignore"):
            in_tolerances = gaps / allowed
        i, j = np.unravel_index(int(np.argmin(in_tolerances)), gaps.shape)
        if in_tolerances[i, j] < self.gap_tolerances:
            self.gap, self.gap_tolerances = float(gaps[i, j]), float(in_tolerances[i, j])
            self.gap_element, self.gap_observation = int(j), _kept(obs[i])

    def as_dict(self) -> dict:
        """As the report holds it (JSON has no infinity: a ratio that is not finite is null,
        with `worst_ratio_finite` false)."""
        found = {
            "observations": int(self.histogram.sum()),
            "worst_ratio": _finite_or_none(max(self.worst, 0.0)),
            "worst_ratio_finite": math.isfinite(self.worst),
            "action_element": self.element,
            "worst_by_element": [_finite_or_none(v) for v in self.by_element]
            if self.by_element is not None else [],
            **(self.row or {"observation": None, "predict": None, "final": None}),
            "ratio_histogram": {"bins": list(RATIO_BINS),
                                "counts": self.histogram.tolist()},
        }
        if self.drawn_low is not None:
            low, high = self.bounds if self.bounds is not None else (None, None)
            found["drawn"] = {
                "observation_low": self.drawn_low.tolist(),
                "observation_high": self.drawn_high.tolist(),
                "declared_low": None if low is None else [_finite_or_none(v) for v in low],
                "declared_high": None if high is None else [_finite_or_none(v) for v in high]}
        if self.left_bounds is not None:
            found["mean_left_bounds_by_element"] = self.left_bounds.tolist()
        if self.by_step:
            found["worst_by_step"] = [_finite_or_none(v) if v >= 0 else None
                                      for v in self.by_step]
        if self.chosen:
            found["choices"] = {"predict": dict(sorted(self.chosen.items())),
                                "final": dict(sorted(self.answered.items()))}
        if self.gap_element is not None or math.isfinite(self.gap):
            found.update(closest_score_gap=_finite_or_none(self.gap),
                         closest_score_gap_tolerances=_finite_or_none(self.gap_tolerances),
                         closest_score_gap_element=self.gap_element,
                         closest_score_gap_observation=self.gap_observation)
        return found


def _kept(observation: np.ndarray) -> list | None:
    return observation.tolist() if observation.size <= KEPT_OBSERVATION else None


def margin_properties(margin: dict) -> list[tuple[str, object]]:
    """A clause's margin as report properties: whole (for the run's record) and flat (JUnit)."""
    return [("margin", margin),
            ("margin_worst_ratio", "inf" if not margin["worst_ratio_finite"]
             else margin["worst_ratio"]),
            ("margin_action_element", margin["action_element"]),
            ("ratio_histogram", " ".join(f"{b}:{n}" for b, n in
                                         zip(margin["ratio_histogram"]["bins"],
                                             margin["ratio_histogram"]["counts"]))),
            *((("margin_closest_score_gap", margin["closest_score_gap"]),)
              if "closest_score_gap" in margin else ())]


@dataclass
class ParityStats:
    """What the parity clauses actually exercised, per clause ID."""
    observations: Counter = field(default_factory=Counter)
    out_of_bounds: Counter = field(default_factory=Counter)
    near_ties: Counter = field(default_factory=Counter)
    at_clip: Counter = field(default_factory=Counter)
    overflows: Counter = field(default_factory=Counter)
    reach: Counter = field(default_factory=Counter)  # a maximum, not a sum
    choices: dict = field(default_factory=dict)  # clause -> the (element, value) predict() chose
    possible: Counter = field(default_factory=Counter)
    searched: Counter = field(default_factory=Counter)
    stopped: Counter = field(default_factory=Counter)
    margins: dict = field(default_factory=dict)  # clause -> Margin
    # clause -> what it compared, kept for the PORT clauses to run in other engines: batches
    # (observations, masks) or rollouts (arguments of rollout_problem), KEPT_BYTES at most
    kept: dict = field(default_factory=dict)
    kept_bytes: Counter = field(default_factory=Counter)
    kept_rows: Counter = field(default_factory=Counter)
    found_right: Counter = field(default_factory=Counter)  # batches (rollouts) kept or not
    runtimes: dict = field(default_factory=dict)  # clause -> {engine: its verdict} (PORT-04)
    predicted: dict = field(default_factory=dict)  # what the PORT clauses asked predict() once

    def keep(self, clause_id: str, arrays: tuple) -> None:
        """Keep what a clause compared and found right (its first rows, up to KEPT_ROWS and
        KEPT_BYTES of them): the PORT clauses judge what another engine changes, not the faults
        the parity clauses report."""
        self.found_right[clause_id] += 1
        if len(arrays) == 3:  # a batch: its first rows, where the whole one does not fit
            obs, masks, _ = arrays
            room = min(KEPT_ROWS - self.kept_rows[clause_id],
                       (KEPT_BYTES - self.kept_bytes[clause_id]) // max(obs[0].nbytes, 1))
            if 0 < room < len(obs):
                arrays = (obs[:room], None if masks is None else masks[:room], None)
        size = sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))
        rows = int(np.prod(arrays[0].shape[:-1]))  # a rollout's steps times environments
        if self.kept_bytes[clause_id] + size <= KEPT_BYTES and \
                self.kept_rows[clause_id] + rows <= KEPT_ROWS:
            self.kept.setdefault(clause_id, []).append(arrays)
            self.kept_bytes[clause_id] += size
            self.kept_rows[clause_id] += rows

    def kept_in_turn(self) -> list[list[tuple]]:
        """What the clauses kept, a batch (or rollout) of each in turn, in groups: a rollout
        alone, consecutive batches up to ENGINE_ROWS rows together (an engine runs a large
        batch at a time)."""
        queues = list(self.kept.values())
        turns = [q[i] for i in range(max(map(len, queues), default=0)) for q in queues
                 if i < len(q)]
        groups: list[list[tuple]] = []
        for arrays in turns:
            last = groups[-1] if groups else None
            if len(arrays) == 3 and last is not None and len(last[0]) == 3 and \
                    sum(len(a[0]) for a in last) + len(arrays[0]) <= ENGINE_ROWS:
                last.append(arrays)
            else:
                groups.append([arrays])
        return groups

    def margin(self, clause_id: str) -> Margin:
        return self.margins.setdefault(clause_id, Margin())

    def record(self, clause_id: str, checked: int, out_of_bounds: int, at_clip: int = 0,
               overflows: int = 0, reach: int = 0) -> None:
        self.observations[clause_id] += checked
        self.out_of_bounds[clause_id] += out_of_bounds
        self.at_clip[clause_id] += at_clip
        self.overflows[clause_id] += overflows
        self.reach[clause_id] = max(self.reach[clause_id], reach)

    def for_clause(self, clause_id: str) -> list[tuple[str, int]]:
        """The counts of one clause as report properties (none if it checked nothing), and
        the verdict of each runtime it ran."""
        verdicts = [("runtimes", self.runtimes[clause_id])] if clause_id in self.runtimes \
            else []
        if not self.observations[clause_id]:
            return verdicts
        counts = (self.observations, self.out_of_bounds, self.near_ties, self.at_clip,
                  self.overflows, self.reach,
                  {clause_id: len(self.choices.get(clause_id, ()))}, self.possible,
                  self.searched, self.stopped)
        found = [(name, count[clause_id])
                 for name, count in zip(STATISTICS, counts, strict=True)]
        if clause_id in self.margins and self.margins[clause_id].histogram.any():
            found += margin_properties(self.margins[clause_id].as_dict())
        return found + verdicts

    def record_search(self, clause_id: str, search) -> None:
        """How far the each-action search (model.ChoiceSearch) got, for a clause drawing near
        the rows it found."""
        self.searched[clause_id] = search.reached
        self.stopped[clause_id] = math.ceil(search.budget) if search.stopped else 0

    def record_choices(self, clause_id: str, actions: np.ndarray, possible: int) -> None:
        """The discrete actions predict() returned for compared rows ([B, elements])."""
        made = self.choices.setdefault(clause_id, set())
        for element in range(actions.shape[1]):
            made |= {(element, int(v)) for v in np.unique(actions[:, element])}
        self.possible[clause_id] = possible


def _joined(group: list[tuple]) -> tuple:
    """A group of batches (observations, masks, schedule) as one batch (observations, masks);
    masks not given are all allowed."""
    given = [masks for _, masks, _ in group if masks is not None]
    if not given:
        return np.concatenate([obs for obs, _, _ in group]), None
    width = given[0].shape[1]
    return (np.concatenate([obs for obs, _, _ in group]),
            np.concatenate([masks if masks is not None else np.ones((len(obs), width), bool)
                            for obs, masks, _ in group]))


@dataclass(frozen=True)
class Problem:
    """A disagreement with predict(): what it is, and what usually causes such a one."""
    text: str
    causes: str

    def __str__(self) -> str:
        return self.text


class Mismatch(AssertionError):
    """A disagreement, with the arrays that replay it (see `policy-onnx replay`)."""

    def __init__(self, problem: Problem, drawn: str, replay: dict[str, np.ndarray | None]):
        super().__init__(f"{problem.text}\n  drawn as {drawn}")
        self.causes = problem.causes
        self.replay = replay


# Once a search has failed, hypothesis shrinks the failing example, and every attempt runs a
# whole batch (at every batch size, and a large batch): a failing clause took minutes. Past
# this many attempts, only the examples that already failed are checked again (so that
# hypothesis's replay of the smallest one holds) and the others pass unchecked: the
# counterexample is the smallest found by then, the same in every run.
SHRINK_ATTEMPTS = 40


def _bounded_shrinking(check):
    """`check(batch)` with shrinking cut off after SHRINK_ATTEMPTS examples past the first
    failure."""
    failed: set[bytes] = set()
    attempts = 0

    def key(batch) -> bytes:
        return hashlib.sha256(pickle.dumps(batch)).digest()

    @functools.wraps(check)
    def bounded(batch) -> None:
        nonlocal attempts
        if failed and key(batch) not in failed:  # until a failure, no example is hashed
            attempts += 1
            if attempts > SHRINK_ATTEMPTS:
                return
        try:
            check(batch)
        except Mismatch:
            failed.add(key(batch))
            raise
    return bounded


def _worst(diff: np.ndarray) -> float:
    return float("nan") if np.isnan(diff).any() else float(diff.max())


def _run_scheduled(artifact: Artifact, obs: np.ndarray, masks: np.ndarray | None,
                  batch_sizes: tuple[int, ...] | None):
    """The artifact's final actions for the rows of `obs` run in consecutive batches of
    `batch_sizes` (one batch: None), the rows repeated where the sizes add up to more:
    (actions per row run, the row of `obs` each one is, the size of the batch it ran in)."""
    total = sum(batch_sizes) if batch_sizes else len(obs)
    origin = np.arange(total) % len(obs)
    obtained = artifact.final_action(obs[origin], None if masks is None else masks[origin],
                                     batch_sizes)
    ran_in = np.repeat(batch_sizes, batch_sizes) if batch_sizes else np.full(total, total)
    return obtained, origin, ran_in


def _worst_copies(origin: np.ndarray, badness: np.ndarray) -> np.ndarray:
    """For each row of the example (0, 1, ...), the run of it with the largest `badness`."""
    order = np.lexsort((-badness, origin))
    return order[np.r_[True, origin[order][1:] != origin[order][:-1]]]


def compare(reference: Reference, artifact: Artifact, obs: np.ndarray, stats: ParityStats,
            clause_id: str, batch_sizes: tuple[int, ...] | None = None,
            expected: np.ndarray | None = None) -> Problem | None:
    """None when every row matches in every batch it ran in, or differs only where
    predict()'s own rounding could have given the artifact's action (a rounding tie,
    counted); else the worst row. `expected`: predict()'s actions, when already known."""
    expected = reference.predict(obs) if expected is None else expected
    obtained, origin, ran_in = _run_scheduled(artifact, obs, None, batch_sizes)
    if obtained.shape[1:] != expected.shape[1:]:
        return Problem(f"the final action has shape {obtained.shape[1:]} per row, but predict() "
                       f"returns {expected.shape[1:]}", LIKELY_CAUSES)
    diff = np.abs(obtained - expected[origin])
    copies = _worst_copies(origin, np.where(np.isnan(diff), np.inf, diff).max(axis=1))
    obtained, diff, ran_in = obtained[copies], diff[copies], ran_in[copies]
    # The noise term of the tolerance is costly: measure it only for rows the fixed term rejects.
    # NaN in either side must fail: compare with "not <=".
    tolerance = np.broadcast_to(reference.fixed_tolerance, diff.shape).copy()
    suspects = (~(diff <= tolerance)).any(axis=1)
    if suspects.any():
        tolerance[suspects] = reference.tolerance(obs[suspects])
    bad = ~(diff <= tolerance)
    excess = np.where(np.isnan(diff), np.inf, diff / tolerance)
    excused = np.zeros_like(bad)
    rows = np.flatnonzero(bad.any(axis=1))
    if len(rows):
        ties = reference.within_rounding(obs[rows], obtained[rows], expected[rows])
        stats.near_ties[clause_id] += int((bad[rows] & ties).any(axis=1).sum())
        excused[rows] = bad[rows] & ties
        bad[rows] &= ~ties
    stats.margin(clause_id).add(excess, obs, expected, obtained, excused)
    if not bad.any():
        return None
    rows = np.flatnonzero(bad.any(axis=1))
    extreme = _extreme(reference, obs[rows], obtained[rows])
    worst = _first_ordinary(rows, extreme, excess[rows].max(axis=1, where=bad[rows],
                                                            initial=-np.inf))
    mean = reference.mean(obs[worst:worst + 1])[0]
    text = "\n".join([
        f"max |final - predict| = {_worst(diff[worst]):.3g} at row {worst}, run in a batch of "
        f"{ran_in[worst]} ({len(rows)} of {len(obs)} rows differ), "
        f"but must be <= tolerance {tolerance[worst].max():.3g} "
        f"(action_transform={artifact.transform})",
        f"  obs       = {row(obs[worst])}",
        f"  predict   = {row(expected[worst])}",
        f"  final     = {row(obtained[worst])}",
        f"  |diff|    = {row(diff[worst])}",
        f"  tolerance = {row(tolerance[worst])}  ({RULE})",
        f"  pre-clip mean = {row(mean)}  (action bounds low={row(reference.low)}, "
        f"high={row(reference.high)})",
    ])
    return _with_causes(bool(extreme.all()), text, LIKELY_CAUSES, len(rows))


def _extreme(reference: Reference, obs: np.ndarray, obtained: np.ndarray) -> np.ndarray:
    """Per row: is it near float32's limits? The artifact's action is not finite, the
    observation holds a magnitude past sqrt(float32's largest) (where a product of two such
    values overflows), or predict()'s network meets magnitudes past NEAR_OVERFLOW."""
    return (~np.isfinite(obtained.reshape(len(obs), -1)).all(axis=1)
            | (np.abs(obs).max(axis=1) >= math.sqrt(FLOAT32_MAX))
            | (reference.magnitudes(obs) >= NEAR_OVERFLOW))


def _first_ordinary(rows: np.ndarray, extreme: np.ndarray, badness: np.ndarray) -> int:
    """The row to report: the worst of the rows far from float32's limits (a fault there has
    an ordinary cause), else the worst of all."""
    ordinary = ~extreme
    if ordinary.any():
        return int(rows[ordinary][np.argmax(badness[ordinary])])
    return int(rows[np.argmax(badness)])


def _with_causes(all_extreme: bool, text: str, usual: str, differing: int) -> Problem:
    """The problem with the causes that fit it: float32 overflow when every differing row is
    near float32's limits."""
    if not all_extreme:
        return Problem(text, usual)
    return Problem(f"{text}\n  all {differing} differing rows are near float32's limits (an "
                   "action that is not finite, observations past 1.8e19, or a network meeting "
                   f"magnitudes past {NEAR_OVERFLOW:g})", OVERFLOW_CAUSES)


def _score_gaps(reference: Reference, expected: np.ndarray, obtained: np.ndarray,
                scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per action element: how much better the model scores its own choice than the artifact's,
    and the score of its own choice (both float64, [B, elements])."""
    if reference.kind == "MultiBinary":
        # round(sigmoid(logit)): the choice flips at logit 0, so the gap is |logit|.
        return np.abs(scores), scores
    gaps, chosen = [], []
    for j, split in enumerate(_per_element(reference, scores)):
        n = split.shape[1]
        mine = np.clip(expected[:, j].astype(np.int64), 0, n - 1)
        theirs = obtained[:, j]
        valid = (theirs == np.round(theirs)) & (theirs >= 0) & (theirs < n)
        theirs = np.where(valid, theirs, 0).astype(np.int64)
        rows = np.arange(len(split))
        gap = split[rows, mine] - split[rows, theirs]
        gaps.append(np.where(valid, gap, np.inf))
        chosen.append(split[rows, mine])
    return np.stack(gaps, axis=1), np.stack(chosen, axis=1)


def _per_element(reference: Reference, scores: np.ndarray) -> list[np.ndarray]:
    """A Discrete or MultiDiscrete policy's scores [B, choices], split per action element."""
    if reference.kind == "Discrete":
        return [scores]
    return np.split(scores, np.cumsum(reference.action_space.nvec)[:-1], axis=1)


def _beyond_ties(differs, gaps, chosen, noise, stats: ParityStats, clause_id: str):
    """Which differing choices are real disagreements, not rounding ties (a tie: the two
    choices' scores within the tolerance of the chosen score, given the scores' float32 noise,
    either way: the scores come from the suite's copy of the network, which must not rank the
    artifact's choice clearly above predict()'s); ties are counted. Returns (real, allowed
    gap)."""
    allowed = magnitude_tolerance(chosen, noise.max(axis=1, keepdims=True))
    real = differs & ~(np.abs(gaps) <= allowed)
    stats.near_ties[clause_id] += int((differs & ~real).any(axis=1).sum())
    return real, allowed


def _disagreement_ratio(differs: np.ndarray, gaps: np.ndarray, allowed: np.ndarray
                        ) -> np.ndarray:
    """A discrete action's ratio to its tolerance: 0 where it equals predict()'s, else the
    score gap over the tie tolerance (a tie at most 1; inf for an action that is no choice)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(differs, np.abs(gaps) / allowed, 0.0)


def runner_up_gaps(reference: Reference, scores: np.ndarray, masks: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per row and action element [B, elements]: how far predict()'s choice scores above the
    best other choice (inf where it has no rival: one choice, or one allowed by the mask), and
    the tie tolerance of that gap (its fixed term, spec section 6)."""
    if masks is not None and masks.shape[1] == scores.shape[1]:
        scores = np.where(masks, scores, -np.inf)
    if reference.kind == "MultiBinary":  # the choice flips at logit 0
        return np.abs(scores), magnitude_tolerance(scores)
    gaps, allowed = [], []
    for split in _per_element(reference, scores):
        if split.shape[1] < 2:
            top, gap = split[:, 0], np.full(len(split), np.inf)
        else:
            two = np.partition(split, split.shape[1] - 2, axis=1)[:, -2:]
            top = two[:, 1]
            with np.errstate(invalid="ignore"):
                gap = np.nan_to_num(top - two[:, 0], nan=np.inf)
        gaps.append(gap)
        allowed.append(magnitude_tolerance(np.where(np.isfinite(top), top, 0.0)))
    return np.stack(gaps, axis=1), np.stack(allowed, axis=1)


def rounding_ties(reference: Reference, obs: np.ndarray) -> np.ndarray:
    """Per row and action element [B, elements] of a discrete policy: is predict()'s choice a
    rounding tie there (its score within the tie tolerance of the best other choice, every
    action allowed)? None for a Box or recurrent policy."""
    if reference.kind == "Box" or reference.structure == "recurrent":
        return None
    gaps, allowed = runner_up_gaps(reference, reference.examine(obs)[0], None)
    return np.abs(gaps) <= allowed


def compare_discrete(reference: Reference, artifact: Artifact, obs: np.ndarray,
                     stats: ParityStats, clause_id: str, masks: np.ndarray | None = None,
                     batch_sizes: tuple[int, ...] | None = None,
                     expected: np.ndarray | None = None) -> Problem | None:
    """None when every action, in every batch it ran in, equals predict() or differs only at
    a rounding tie. `expected`: predict()'s actions, when already known."""
    if reference.masked and masks is None:
        masks = np.ones((len(obs), reference.head.mask_width), dtype=bool)
    expected = reference.predict(obs, masks) if expected is None else expected
    stats.record_choices(clause_id, expected, len(reference.choices))
    obtained, origin, ran_in = _run_scheduled(artifact, obs, masks, batch_sizes)
    obtained = obtained.reshape(len(origin), -1)
    if obtained.shape[1:] != expected.shape[1:]:
        return Problem(f"the action has {obtained.shape[1]} elements per row, but predict() "
                       f"returns {expected.shape[1]}", DISCRETE_CAUSES)
    copies = _worst_copies(origin, (~(obtained == expected[origin])).sum(axis=1))
    obtained, ran_in = obtained[copies], ran_in[copies]
    differs = ~(obtained == expected)
    margin = stats.margin(clause_id)
    margin.count_choices(expected, obtained)
    if not differs.any():
        margin.add(np.zeros(differs.shape), obs, expected, obtained)
        return None
    rows = np.flatnonzero(differs.any(axis=1))
    scores = reference.scores(obs[rows], None if masks is None else masks[rows])
    gaps, chosen = _score_gaps(reference, expected[rows], obtained[rows], scores)
    noise = reference.rounding_noise(obs[rows], raw=True)
    real, allowed = _beyond_ties(differs[rows], gaps, chosen, noise, stats, clause_id)
    ratio = np.zeros(differs.shape)
    ratio[rows] = _disagreement_ratio(differs[rows], gaps, allowed)
    excused = np.zeros_like(differs)
    excused[rows] = differs[rows] & ~real
    margin.add(ratio, obs, expected, obtained, excused)
    if not real.any():
        return None
    differing = real.any(axis=1)
    extreme = _extreme(reference, obs[rows[differing]], obtained[rows[differing]])
    worst = _first_ordinary(np.flatnonzero(differing), extreme, np.zeros(len(extreme)))
    i = rows[worst]
    text = "\n".join([
        f"the action differs from predict() at row {i}, run in a batch of {ran_in[i]} "
        f"({int(differing.sum())} of {len(obs)} rows differ beyond a rounding tie)",
        f"  obs     = {row(obs[i])}",
        f"  predict = {expected[i].tolist()}",
        f"  action  = {obtained[i].tolist()}",
        *([f"  mask    = {masks[i].astype(int).tolist()}"] if masks is not None else []),
        f"  model scores = {row(scores[worst])}",
        f"  score gap = {row(gaps[worst])}, a tie only within {row(allowed[worst])}",
    ])
    return _with_causes(bool(extreme.all()), text, DISCRETE_CAUSES, int(differing.sum()))


LIKELY_CAUSES = (
    "Usual causes: the clamp to the action bounds is missing or uses other bounds "
    "(predict() clips the Gaussian mean); the declared action_transform, action_scale or "
    "action_offset does not reproduce predict()'s post-processing; the exported weights differ "
    "from the model's; the graph samples instead of taking the mean.")
DISCRETE_CAUSES = (
    "Usual causes: argmax over the wrong axis or the wrong split of the logits; the exported "
    "weights differ from the model's; a threshold other than predict()'s round(sigmoid(logit)); "
    "the graph samples instead of taking the most likely action.")
# A network meeting magnitudes past this is near float32 overflow (SAFE_MAGNITUDE is where the
# suite stops comparing): a difference there is told as one.
NEAR_OVERFLOW = 1e30
OVERFLOW_CAUSES = (
    "The artifact differs only near float32's limits, so the usual causes are there, not in "
    "the post-processing: its arithmetic overflows where predict()'s does not (a product or "
    "square of observations, normalization or scaling folded into the weights, a reordered "
    "sum, a cast to a narrower float type), or it limits large observations on the way in (a "
    "clip, a saturation), which predict() does not.")


def compare_any(reference: Reference, artifact: Artifact, obs: np.ndarray,
                stats: ParityStats, clause_id: str, masks: np.ndarray | None = None,
                batch_sizes: tuple[int, ...] | None = None,
                expected: np.ndarray | None = None) -> Problem | None:
    """The comparison of the policy's kind: a tolerance for Box actions, ties for discrete;
    the artifact runs the rows in consecutive batches of `batch_sizes` (None: one batch);
    `expected`: predict()'s actions, when already known."""
    if reference.kind == "Box":
        return compare(reference, artifact, obs, stats, clause_id, batch_sizes, expected)
    return compare_discrete(reference, artifact, obs, stats, clause_id, masks, batch_sizes,
                            expected)


def search_settings() -> settings:
    """The settings of a clause's search: the profile in effect (made when the clause runs, so
    that --hypothesis-profile applies), with every health check off. Health checks judge the
    suite's own strategies (an example too large, too slow to draw...), never the artifact:
    none of them may end a clause."""
    return settings(suppress_health_check=list(HealthCheck))


def check_parity(clause: spec.Clause, reference: Reference, artifact: Artifact, strategy,
                 policy, steer: bool = False, decisions=None,
                 rows: np.ndarray | None = None, search=None, all_allowed: bool = False
                 ) -> None:
    """Run the hypothesis search; fail the clause with the worst observation of the minimal
    example. With `steer`, hypothesis is also told to maximize the share of rows whose mean leaves
    the action bounds. Rows where predict() cannot decide (its float32 network can overflow)
    are not compared, and counted. What the decision search found in the artifact's graph
    (`decisions`, a decisions.Coverage) comes first: every row it found (or the clause's own
    `rows`), in a large batch of each batch size it found deciding something. `search`
    (model.ChoiceSearch, or None): how far the each-action search whose rows the strategy draws
    near got, reported with the clause. With `all_allowed`, a masked policy's decision examples
    allow every action (as the clause's own draws do)."""
    if search is not None:
        policy.stats.record_search(clause.id, search)

    @search_settings()
    @given(batch=strategy)
    @_bounded_shrinking
    def parity_holds(batch: Batch) -> None:
        raw, decided, expected = reference.examine_and_predict(batch.observations, batch.masks)
        obs = batch.observations[decided]
        masks = None if batch.masks is None else batch.masks[decided]
        undecided = int((~decided).sum())
        if not len(obs):
            policy.stats.record(clause.id, 0, 0, 0, undecided)
            return
        raw = raw[decided]  # a Box policy's pre-clip mean, a discrete one's scores
        outside = _outside_bounds(reference, raw)
        out_of_bounds = 0 if outside is None else int(outside.any(axis=1).sum())
        if steer:
            target(out_of_bounds / len(obs), label="share of rows whose mean leaves the bounds")
        schedule = batch.schedule(len(obs))
        problem = compare_any(reference, artifact, obs, policy.stats, clause.id, masks,
                              schedule, expected[decided])
        # Counted once both sides have acted on them (an artifact that cannot run raises above).
        _account(reference, policy.stats, clause.id, obs, masks, raw, outside, undecided)
        if problem:
            raise Mismatch(problem, repr(batch), {"observations": obs, "masks": masks,
                                                  "batch_sizes": schedule})
        policy.stats.keep(clause.id, (obs, masks, schedule))

    for batch in _decision_examples(reference, decisions, rows, all_allowed):
        parity_holds = example(batch=batch)(parity_holds)
    _search(clause, parity_holds, policy)


def _account(reference: Reference, stats: ParityStats, clause_id: str, obs: np.ndarray,
             masks: np.ndarray | None, raw: np.ndarray, outside: np.ndarray | None,
             undecided: int = 0) -> None:
    """What a clause compared, counted, and its margin's context: the drawn range, how often
    the mean left the bounds, the closest score gap (`raw`: predict()'s pre-clip means or
    scores of `obs`; `outside`: where they leave the bounds)."""
    margin = stats.margin(clause_id)
    if margin.bounds is None:
        margin.bounds = (reference.domain.low, reference.domain.high)
    if reference.kind != "Box":
        margin.add_gaps(*runner_up_gaps(reference, raw, masks), obs)
    elif outside is not None:
        margin.count_left_bounds(outside)
    stats.record(clause_id, len(obs), 0 if outside is None else int(outside.any(axis=1).sum()),
                 int(reference.at_clip(obs).sum()), undecided)


def _outside_bounds(reference: Reference, raw: np.ndarray) -> np.ndarray | None:
    """Where a Box policy's pre-clip mean leaves the action bounds (None: it never clips)."""
    return (raw > reference.high) | (raw < reference.low) if reference.clips else None


def check_engine_parity(clause: spec.Clause, reference: Reference, artifact: Artifact,
                        policy, engine: str, batch_sizes: tuple[int, ...] = ()) -> None:
    """What the parity clauses compared (kept by them: their first rows and rollouts, a batch
    of each in turn; fresh probe rows when none ran), run by `engine` for ENGINE_SECONDS at
    most, must match predict() as they require, also in ENGINE_BATCH_SIZES and the
    `batch_sizes` the decision search found. Under onnx.reference, where an ArgMax or ArgMin
    met an exact tie, the run is repeated with such ties broken the other way."""
    kept = _kept_or_fresh(clause, reference, policy, batch_sizes)
    reference = _Remembered(reference, policy.stats.predicted)
    under = artifact.under(engine)
    problem = _engine_problem(clause, reference, under, policy, kept)
    if problem is None and engine == engines.REFERENCE and under.session.tied:
        problem = _engine_problem(clause, reference,
                                  artifact.under(engines.REFERENCE_TIES_FLIPPED), policy, kept)
    if problem is not None:
        check.fail(clause, f"{_engine_failure(clause.id, policy, *problem)}\n{ENGINE_CAUSES}")


def check_runtimes(clause: spec.Clause, reference: Reference, artifact: Artifact, policy,
                   runtimes: list[str], batch_sizes: tuple[int, ...] = ()) -> None:
    """PORT-04: each runtime on what the parity clauses compared, as check_engine_parity runs
    an engine; its verdict ("loads and matches", "does not load: ...", "loads, differs") is
    reported with the clause, and every runtime but one that loads and matches fails it."""
    kept = _kept_or_fresh(clause, reference, policy, batch_sizes)
    reference = _Remembered(reference, policy.stats.predicted)
    verdicts, failures = {}, []
    for runtime in runtimes:
        under = artifact.under(runtime)
        try:
            under.session
        except ArtifactError as exc:
            verdicts[engines.label(runtime)] = f"does not load: {exc}"
            failures.append(f"{engines.label(runtime)} does not load: {exc}")
            continue
        problem = _engine_problem(clause, reference, under, policy, kept)
        verdicts[engines.label(runtime)] = "loads and matches" if problem is None \
            else "loads, differs"
        if problem is not None:
            failures.append("loads, differs: "
                            + _engine_failure(f"{clause.id}-{runtime}", policy, *problem))
    policy.stats.runtimes[clause.id] = verdicts
    if failures:
        check.fail(clause, "\n".join(failures))


class _Remembered:
    """A Reference whose predict() and raw() of the same rows are computed once: the PORT
    clauses run the same kept rows in several engines (`memory`: the policy's)."""

    def __init__(self, reference: Reference, memory: dict):
        self._reference, self._memory = reference, memory

    def __getattr__(self, name: str):
        return getattr(self._reference, name)

    def predict(self, obs: np.ndarray, *masks):
        return self._once("predict", obs, *masks)

    def raw(self, obs: np.ndarray):
        return self._once("raw", obs)

    def _once(self, what: str, *arrays):
        key = (what, *(None if a is None else hashlib.sha1(np.ascontiguousarray(a)).digest()
                       for a in arrays))
        if key not in self._memory:
            self._memory[key] = getattr(self._reference, what)(*arrays)
        return self._memory[key]


def _kept_or_fresh(clause: spec.Clause, reference: Reference, policy,
                   batch_sizes: tuple[int, ...] = ()) -> list[list[tuple]]:
    """What the parity clauses compared and found right, or, where they did not run, the
    probe's rows; a skip where they found everything wrong in ONNX Runtime itself. First, the
    first kept batch's rows in ENGINE_BATCH_SIZES and `batch_sizes` (not for rollouts)."""
    kept = policy.stats.kept_in_turn()
    if not kept and not policy.stats.found_right and \
            any(n for cid, n in policy.stats.observations.items()
                if not spec.clause(cid).portability):
        pytest.skip(f"{clause.id} not checked: the parity clauses found every batch they "
                    "compared wrong in ONNX Runtime itself (their failures say where)")
    kept = kept or _fresh(reference)
    if len(kept[0][0]) == 4:
        return kept
    obs, masks = _joined(kept[0])
    sizes = (*ENGINE_BATCH_SIZES, *(min(n, ENGINE_ROWS) for n in batch_sizes))
    rows = slice(0, max(ENGINE_BATCH_SIZES))
    return [[(obs[rows], None if masks is None else masks[rows], sizes)], *kept]


def _engine_failure(name: str, policy, text: str, replay: dict, engine: str) -> str:
    """A disagreement in another engine, with its counterexample (saved as `name`)."""
    saved = policy.save_counterexample(name, {**replay, "engine": engine})
    return (f"under {engines.label(engine)}: {text}\n"
            f"Counterexample: {saved}; replay it: {policy.replay(saved)}")


ENGINE_CAUSES = (
    "Likely causes: the artifact acts like predict() in ONNX Runtime as the parity clauses run "
    "it only because of what that session does beyond the operator specs: its graph "
    "optimizations (a Shape folded from a value_info that does not hold, a rewrite), or an "
    "operator case the specs leave to the engine (a float cast to an integer from NaN, an "
    "infinity or out of range; a Clip with min above max; an exact tie in an ArgMax whose "
    "index the action depends on). Another engine, or the same one with other settings, acts "
    "otherwise.")


def _fresh(reference: Reference) -> list[list[tuple]]:
    """The probe's rows predict() decides (for a recurrent policy, inside draws rolled out by 4
    environments for 24 steps), for a PORT clause run without the parity clauses."""
    rows = reference.domain.probe().astype(np.float32)
    if reference.structure != "recurrent":
        return [[(rows[reference.examine(rows)[1]], None, None)]]
    rows = reference.domain.inside(np.random.default_rng(0), ENV_ROLLOUT * 4).astype(np.float32)
    steps = rows.reshape(ENV_ROLLOUT, 4, -1)
    starts = np.zeros((ENV_ROLLOUT, 4), np.float32)
    starts[0] = 1.0
    return [[(steps, starts, None, 0)]]


def _engine_problem(clause, reference, under: Artifact, policy, kept: list[list[tuple]]):
    """(failure text, arrays that replay it, engine) for the first of `kept` `under` gets
    wrong, within the time budget; None when all it ran agree. A group of batches runs as one
    batch where ONNX Runtime's default session acts like predict() on it too; elsewhere (a
    fault keyed to batch sizes, the parity clauses' to report) each batch runs as the parity
    clause ran it."""
    stats, start = policy.stats, time.thread_time()
    default = under.under(engines.ORT)
    for group in kept:
        if time.thread_time() - start > ENGINE_SECONDS:
            stats.stopped[clause.id] = math.ceil(ENGINE_SECONDS)
            return None
        if len(group[0]) == 4:  # a rollout
            steps, starts, initial, warm_up = group[0]
            runs = [(_rollout_replay(*group[0]), lambda: rollout_problem(
                reference, under, steps, starts, stats, clause.id, initial, warm_up))]
        else:
            obs, masks = _joined(group)
            schedule = group[0][2] if len(group) == 1 else None
            try:
                together = compare_any(reference, default, obs, ParityStats(), clause.id,
                                       masks, schedule) is None
            except ArtifactError:  # the behaviour clauses' to report
                together = False
            # where ONNX Runtime's default session is wrong too, the parity clauses report it
            parts = [(obs, masks, schedule)] if together else \
                [part for part in group if len(group) > 1]
            runs = [({"observations": o, "masks": m, "batch_sizes": b},
                     functools.partial(_engine_batch, clause, reference, under, stats, o, m, b))
                    for o, m, b in parts]
        for replay, run in runs:
            try:
                text = run()
            except ArtifactError as exc:
                text = str(exc)
            if text:
                return text, replay, under.engine
    return None


def _engine_batch(clause, reference, under: Artifact, stats: ParityStats, obs: np.ndarray,
                  masks: np.ndarray | None, batch_sizes) -> str | None:
    """One batch of rows in another engine: counted, and compared with predict()."""
    found = compare_any(reference, under, obs, stats, clause.id, masks, batch_sizes)
    raw = reference.raw(obs)
    _account(reference, stats, clause.id, obs, masks, raw, _outside_bounds(reference, raw))
    return found and str(found)


def _decision_examples(reference: Reference, decisions, rows: np.ndarray | None = None,
                       all_allowed: bool = False) -> list[Batch]:
    """Examples of what the decision search found: its rows (with mask patterns, for a masked
    policy unless `all_allowed`; or the clause's own `rows`), run in each batch size it found (at most four), or the
    probe's first rows in those sizes when it found sizes only."""
    if decisions is None or (decisions.found is None and not decisions.batch_sizes):
        return []
    if rows is None:
        rows = decisions.found if decisions.found is not None \
            else reference.domain.probe()[:16]
    masks = None
    if reference.masked and not all_allowed:
        masks = np.vstack(mask_patterns(len(rows), reference.head.mask_width))
        rows = np.tile(rows, (len(masks) // len(rows), 1))
    return [Batch("decisions", 0, rows, masks, size) for size in decisions.batch_sizes[:4] or [0]]


def _search(clause: spec.Clause, search, policy) -> None:
    """Run a hypothesis search; a mismatch fails the clause with its counterexample saved and
    the commands that replay it and rerun the search."""
    try:
        search()
    except Mismatch as mismatch:
        notes = [n for n in getattr(mismatch, "__notes__", []) if "reproduce_failure" in n]
        saved = policy.save_counterexample(clause.id, mismatch.replay)
        check.fail(clause, "\n".join([
            str(mismatch), f"Counterexample: {saved}; replay it: {policy.replay(saved)}",
            f"Reproduce the search: {policy.reproduce(clause.id)}", *notes, mismatch.causes]))
    except ArtifactError as exc:
        check.fail(clause, str(exc))


# Recurrent rollouts: lengths, episode-start rates and warm-up steps (a rollout that starts from
# the state predict() reaches after that many steps) are drawn per example from these.
ROLLOUT_LENGTHS = (8, 24, 64)
RESET_RATES = (0.0, 0.05, 0.25)
WARM_UPS = (0, 16, 48)
# The first example of every REC-02 search is one long episode of LONG_ROLLOUT steps without a
# reset, over 2 * HELD environments: HELD of them hold one observation all along (zeros, the
# bounds, an inside draw: a state that builds up only under a held input), the others see drawn
# observations.
LONG_ROLLOUT = 320
HELD = 4
# Then a rollout of each of these numbers of environments (a robot alone, a few), and of each
# batch size the decision search found deciding something, ENV_ROLLOUT steps long.
FEW_ENVS = (1, 2, 3)
ENV_ROLLOUT = 24


def check_recurrent_parity(clause: spec.Clause, reference: Reference, artifact: Artifact,
                           strategy, policy, decisions=None) -> None:
    """Rollouts of drawn length over the drawn rows, from a zero or a warmed-up state."""

    @search_settings()
    @given(batch=strategy)
    @_bounded_shrinking
    def rollouts_agree(batch: Batch) -> None:
        rng = np.random.default_rng(batch.seed)
        if batch.regime == "held":
            length = LONG_ROLLOUT  # fewer environments for a large observation, at least 2
            pairs = max(1, rows_for(reference.obs_dim, 2 * length * HELD) // (2 * length))
            held = batch.observations[:pairs]
            drawn = reference.domain.inside(rng, length * len(held)).reshape(length, len(held), -1)
            steps = np.concatenate([np.broadcast_to(held, (length, *held.shape)), drawn], axis=1)
            envs, warm_up = steps.shape[1], 0
            starts = np.zeros((length, envs), dtype=np.float32)
            starts[0] = 1.0
        elif batch.regime == "environments":  # large_batch: how many
            length, envs, warm_up = ENV_ROLLOUT, batch.large_batch, 0
            rows = batch.observations[np.arange(length * envs) % len(batch.observations)]
            steps = rows.reshape(length, envs, -1)
            starts = np.zeros((length, envs), dtype=np.float32)
            starts[0] = 1.0
        else:
            length = int(rng.choice(ROLLOUT_LENGTHS))
            envs = max(4, len(batch.observations) // length)
            envs = max(1, rows_for(reference.obs_dim, envs * length) // length)  # memory budget
            rows = batch.observations
            if len(rows) < length * envs:
                rows = np.vstack([rows, reference.domain.sample(batch.regime, rng,
                                                                length * envs - len(rows))])
            steps = rows[:length * envs].reshape(length, envs, -1)
            starts = (rng.random((length, envs)) < rng.choice(RESET_RATES)).astype(np.float32)
            warm_up = int(rng.choice(WARM_UPS))
            starts[0] = 0.0 if warm_up else 1.0
        initial = reference.warm_state(rng, envs, warm_up)
        problem = rollout_problem(reference, artifact, steps, starts, policy.stats, clause.id,
                                  initial, warm_up)
        if not problem:
            policy.stats.keep(clause.id, (steps, starts, initial, warm_up))
        else:
            raise Mismatch(Problem(problem, RECURRENT_CAUSES),
                           f"{batch}, {length} steps of {envs} environments after {warm_up} "
                           "warm-up steps", _rollout_replay(steps, starts, initial, warm_up))

    probe = reference.domain.probe()
    held = np.vstack([probe[:HELD - 1], probe[-1:]])  # zeros, the bounds; a draw
    # the rows the decision search found (within the probe's reach), then inside draws
    found = np.empty((0, reference.obs_dim)) if decisions is None or decisions.found is None \
        else decisions.found[np.abs(decisions.found).max(axis=1) <= MAX_MAGNITUDE]
    rows = np.vstack([found, reference.domain.inside(np.random.default_rng(0), rows_for(
        reference.obs_dim, 4096))]).astype(np.float32)
    found_sizes = [] if decisions is None else decisions.batch_sizes[:4]
    for envs in sorted(set(FEW_ENVS) | set(found_sizes), reverse=True):
        rollouts_agree = example(batch=Batch("environments", envs, rows, None, envs)
                                 )(rollouts_agree)
    rollouts_agree = example(batch=Batch("held", 0, held.astype(np.float32)))(rollouts_agree)
    _search(clause, rollouts_agree, policy)


def _rollout_replay(steps, starts, initial, warm_up: int) -> dict:
    """A rollout as its counterexample file holds it."""
    return {"observations": steps, "episode_starts": starts,
            "initial_state_h": None if initial is None else initial[0],
            "initial_state_c": None if initial is None else initial[1], "warm_up": warm_up}


def rollout_problem(reference: Reference, artifact: Artifact, steps: np.ndarray,
                    starts: np.ndarray, stats: ParityStats, clause_id: str, initial=None,
                    warm_up: int = 0) -> str | None:
    """Roll both sides over `steps` [T, envs, obs_dim] with `starts` [T, envs] from `initial`
    (predict()'s state; zeros by default). At every step the artifact runs twice: with its own
    state (a runtime carrying it) and with predict()'s (the state is part of the contract);
    the actions of both, and the state it returns from predict()'s, must match predict().
    None when every step agrees, else the first disagreement."""
    envs = steps.shape[1]
    mine = initial if initial is not None else reference.initial_state(envs)
    theirs = None
    since_reset = np.full(envs, warm_up)
    discrete = reference.kind != "Box"
    for t, (obs, start) in enumerate(zip(steps, starts, strict=True)):
        since_reset = np.where(start > 0, 1, since_reset + 1)
        expected, next_mine = reference.step(obs, mine, start)
        mine32 = tuple(np.asarray(s, np.float32) for s in mine)
        own, h, c = artifact.step(obs, *(theirs or mine32), start)
        fed, fed_h, fed_c = artifact.step(obs, *mine32, start)
        stats.record(clause_id, envs, 0, reach=int(since_reset.max()))
        # The reference step in float32 and float64 (action, or scores, and next state): the
        # noise every comparison of this step allows for.
        f32 = reference.step_outputs(obs, mine, start, scores=discrete)
        f64 = reference.step_outputs(obs, mine, start, double=True, scores=discrete)
        ratios = []  # both runs of the artifact, compared eagerly: the step's margin
        problem = (_step_problem(reference, obs, expected, own, f32[0], f64[0], stats,
                                 clause_id, ratios=ratios),
                   _step_problem(reference, obs, expected, fed, f32[0], f64[0], stats,
                                 clause_id, "fed predict()'s state", ratios))
        if len(ratios) == 2:
            own_worse = (ratios[0].max(axis=1) >= ratios[1].max(axis=1))[:, None]
            worse, margin = np.maximum(*ratios), stats.margin(clause_id)
            margin.add(worse, obs, expected,
                       np.where(own_worse, own.reshape(len(obs), -1), fed.reshape(len(obs), -1)))
            margin.add_step(t, worse)
        problem = (problem[0] or problem[1]
                   or _state_problem(next_mine, (fed_h, fed_c), f32[1:], f64[1:]))
        if problem:
            return (f"at step {t} of a rollout of {envs} environments: {problem}\n"
                    f"  episode_start = {start.astype(int).tolist()}")
        mine, theirs = next_mine, (h, c)
    return None


def _step_problem(reference, obs, expected, obtained, f32, f64, stats, clause_id,
                  how="carrying its own state", ratios=None):
    """The artifact's action at one step against predict()'s; `f32` and `f64` are the reference
    step's action (Box) or scores (discrete) in float32 and float64. Each row's ratio to the
    tolerance is appended to `ratios`."""
    if obtained.reshape(len(obs), -1).shape != expected.shape:
        return f"the action has shape {obtained.shape}, predict() returns {expected.shape}"
    obtained = obtained.reshape(len(obs), -1)
    if reference.kind == "Box":
        allowed = tolerance(reference.low, reference.high, np.abs(f32 - f64))
        diff = np.abs(obtained - expected)
        bad = ~(diff <= allowed)
        ratio = np.where(np.isnan(diff), np.inf, diff / allowed)
    else:
        noise = np.abs(f32 - f64)
        gaps, chosen = _score_gaps(reference, expected, obtained, f32)
        differs = ~(obtained == expected)
        bad, allowed = _beyond_ties(differs, gaps, chosen, noise, stats, clause_id)
        ratio = np.where(differs & ~bad, 0.0, _disagreement_ratio(differs, gaps, allowed))
    if ratios is not None:
        ratios.append(ratio)
    if not bad.any():
        return None
    i = int(np.argmax(bad.any(axis=1)))
    return "\n".join([
        f"the artifact {how}: environment {i} ({int(bad.any(axis=1).sum())} of {len(obs)} "
        "differ)",
        f"  obs     = {row(obs[i])}",
        f"  predict = {row(expected[i])}",
        f"  action  = {row(obtained[i])}",
        f"  allowed = {row(allowed[i] if allowed.ndim == 2 else allowed)}"])


def _state_problem(expected, obtained, f32, f64) -> str | None:
    """The next state the artifact returns from predict()'s state against predict()'s own, each
    element within the parity tolerance of its magnitude plus the state's float32 noise (`f32`
    and `f64`: the reference's next state computed both ways)."""
    for name, mine, theirs, low, high in zip(("next_state_h", "next_state_c"), expected,
                                            obtained, f32, f64, strict=True):
        mine = np.asarray(mine, np.float64)
        theirs = np.asarray(theirs, np.float64)
        if theirs.shape != mine.shape:
            return f"{name} has shape {theirs.shape}, predict()'s state has {mine.shape}"
        allowed = magnitude_tolerance(mine, np.abs(low - high))
        bad = ~(np.abs(theirs - mine) <= allowed)
        if bad.any():
            layer, env, unit = np.unravel_index(int(np.argmax(bad)), bad.shape)
            return (f"fed predict()'s state, the artifact returns {name}[{layer}, {env}, {unit}] "
                    f"= {theirs[layer, env, unit]!r}, predict()'s is {mine[layer, env, unit]!r} "
                    f"({int(bad.sum())} elements differ beyond the tolerance)")
    return None


RECURRENT_CAUSES = (
    "Usual causes: the state is not zeroed where episode_start is 1; next_state_h and "
    "next_state_c swapped (in, out or both) or not returned; a state that drifts over long "
    "rollouts; a legacy (TorchScript) export that baked in the "
    "no-reset branch and dropped episode_start; the post-processing of the action as for "
    "the feed-forward clauses.")
