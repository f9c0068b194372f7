"""BEH clauses: batches, row independence, repeatability, finiteness, bounds."""

import numpy as np
import pytest

from policy_onnx.artifact import nodes_with_bodies
from policy_onnx.check import clause_test, fail, require, row, running
from policy_onnx.parity import rounding_ties
from policy_onnx.strategies import BATCH_SIZES, rows_for


def _sizes(probe_observations, decisions) -> list[int]:
    """The batch sizes the suite uses, and those the decision search found deciding something
    in the graph, capped by the memory budget for a large observation."""
    return sorted({rows_for(probe_observations.shape[1], n)
                   for n in (*BATCH_SIZES, *decisions.batch_sizes)})


# BEH-02's batches repeat the probe's first rows, as environments showing the same frame do.
REPEATED_ROWS = 64
# BEH-02 also runs batches of one row repeated, as environments reset to one state are: of
# these sizes, the largest it runs and those the decision search found deciding something.
ONE_ROW_SIZES = (2, 3, 64)
CYCLED = "the probe's first rows, cycled"


@pytest.fixture(scope="session")
def probe_batches(artifact, probe_observations):
    """n -> the output for a batch of the probe's rows, cycled to n. Batches of up to
    REPEATED_ROWS rows are the same in BEH-01 and BEH-02, and are run once. A batch that fails
    to run is not kept: it fails each clause that runs it."""
    kept = {}

    def run(n: int):
        if n in kept:
            return kept[n]
        out = artifact.run(probe_observations[np.arange(n) % len(probe_observations)],
                           one_row_each=False)
        if n <= REPEATED_ROWS:
            kept[n] = out
        return out

    return run


@clause_test("BEH-01")
def test_batch_sizes(clause, artifact, probe_observations, decisions, probe_batches):
    if artifact.action is None:
        fail(clause, "there is no action output (see GRAPH-04)")
    row_shape = artifact.action.dims[1:]
    problems = []
    with running(clause):
        for n in _sizes(probe_observations, decisions):  # the probe's rows, cycled
            shape = probe_batches(n).shape
            static = all(isinstance(d, int) for d in row_shape)
            if shape[0] != n or (static and shape[1:] != row_shape):
                problems.append(f"batch of {n} gives shape {shape}, must be "
                                f"({n}, {', '.join(map(str, row_shape))})")
    require(clause, problems[:5] + ([f"... {len(problems) - 5} more sizes"]
                                    if len(problems) > 5 else []))


@clause_test("BEH-02")
def test_rows_independent(clause, policy, artifact, probe_observations, action_tolerance,
                          decisions, probe_batches):
    """Every batch size the suite uses, its rows the probe's first 64 repeated (batches that
    repeat rows, as environments showing the same frame do; BEH-01 runs the whole probe's
    rows), and a few sizes of one row repeated (ONE_ROW_SIZES): each row as the same row fed
    alone (a batch without one row per observation is BEH-01's concern). A discrete choice may
    differ at a rounding tie (the decision search's rows on either side of an argmax's boundary
    are): predict()'s own, with a model; without one, the graph's own."""
    obs = probe_observations[:REPEATED_ROWS]
    with running(clause):
        if policy.reference is not None:
            ties = rounding_ties(policy.reference, obs)
        elif decisions.tied is not None and len(decisions.tied):
            tied = {np.float32(r).tobytes() for r in decisions.tied}
            ties = np.array([np.float32(r).tobytes() in tied for r in obs])[:, None]
        else:
            ties = None
        alone = np.vstack([artifact.run(one[None]).reshape(1, -1) for one in obs])
        sizes = _sizes(probe_observations, decisions)
        batches = [(n, np.arange(n) % len(obs), CYCLED) for n in sizes]
        one_row = sorted({*(n for n in ONE_ROW_SIZES if n <= sizes[-1]), sizes[-1],
                          *(n for n in decisions.batch_sizes if n in sizes)})
        batches += [(n, np.full(n, k % len(obs)), f"probe row {k % len(obs)}, repeated")
                    for k, n in enumerate(one_row)]
        for size, origin, made in batches:
            batched = probe_batches(size) if size <= REPEATED_ROWS and made == CYCLED \
                else artifact.run(obs[origin], one_row_each=False)
            if batched.shape[:1] == (size,):
                _require_as_alone(clause, obs, origin, batched.reshape(size, -1), alone[origin],
                                  action_tolerance, None if ties is None else ties[origin], made)


def _require_as_alone(clause, obs, origin, batched, alone, action_tolerance, ties,
                      made: str) -> None:
    both_nan = np.isnan(batched) & np.isnan(alone)
    bad = ~((batched == alone) | both_nan)
    if ties is not None and ties.shape[0] == bad.shape[0]:
        bad &= ~ties
    rows = np.flatnonzero(bad.any(axis=1))  # the tolerance only where the rows differ at all
    if not len(rows):
        return
    tolerance = action_tolerance(obs[origin[rows]])
    if tolerance.shape != batched[rows].shape:  # an output of another width: BEH-01's concern
        tolerance = tolerance.max(axis=1, keepdims=True)
    bad[rows] = ~((np.abs(batched[rows] - alone[rows]) <= tolerance) | both_nan[rows])
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        fail(clause, f"row {i} of a batch of {len(batched)} ({made}) gives "
                     f"{batched[i].tolist()}, alone "
                     f"it gives {alone[i].tolist()} (obs={row(obs[origin[i]])}); "
                     f"{int(bad.any(axis=1).sum())} rows differ: the graph mixes rows of the "
                     "batch, or acts on the batch size")


# Operators whose output depends on a generator's state, not on the input alone.
RANDOM_OPERATORS = {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike",
                    "Multinomial", "Bernoulli"}


@clause_test("BEH-03")
def test_repeatable(clause, artifact, probe_observations):
    drawing = sorted({f"{n.op_type} '{n.name}'" for n, _ in nodes_with_bodies(artifact.proto.graph)
                      if n.op_type in RANDOM_OPERATORS and n.domain in ("", "ai.onnx")})
    if drawing:
        fail(clause, f"the graph draws random numbers ({', '.join(drawing[:5])}): its output "
                     "depends on the generator's state, not on the input alone, even when the "
                     "runs the suite makes agree")
    with running(clause):
        first = artifact.run(probe_observations, one_row_each=False)
        second = artifact.run(probe_observations, one_row_each=False)
    if not np.array_equal(first, second, equal_nan=True):
        i = int(np.argmax((first != second).any(axis=1)))
        fail(clause, f"row {i} gave {first[i].tolist()}, then {second[i].tolist()} for the same "
                     "input: the graph is not deterministic (sampling or state?)")


@clause_test("BEH-04")
def test_finite(clause, artifact, probe_observations):
    with running(clause):
        final = artifact.final_action(probe_observations).reshape(len(probe_observations), -1)
    bad = ~np.isfinite(final).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        fail(clause, f"{int(bad.sum())} of {len(final)} finite observations give non-finite "
                     f"actions, e.g. obs={row(probe_observations[i])} -> {final[i].tolist()}")


@clause_test("BEH-05")
def test_within_bounds(clause, artifact, probe_observations, action_tolerance):
    box = artifact.declared_box()
    if box is None:
        fail(clause, "action_space is missing or malformed, so there are no bounds (see META-02)")
    with running(clause):
        final = artifact.final_action(probe_observations)
    if final.shape != (len(probe_observations), box.low.size):
        fail(clause, f"the final action has shape {final.shape} for {len(probe_observations)} "
                     f"observations and {box.low.size} declared bounds (see BEH-01, META-02)")
    # Written as "not inside" so that NaN counts as outside. The tolerance (whose noise term is
    # costly to measure) only for the rows strictly outside.
    outside = ~((final >= box.low) & (final <= box.high))
    rows = np.flatnonzero(outside.any(axis=1))
    slack = action_tolerance(probe_observations[rows])
    outside[rows] = ~((final[rows] >= box.low - slack) & (final[rows] <= box.high + slack))
    if outside.any():
        i = int(np.argmax(outside.any(axis=1)))
        fail(clause, f"{int(outside.any(axis=1).sum())} of {len(final)} final actions leave "
                     f"[low, high] = [{box.low.tolist()}, {box.high.tolist()}], e.g. "
                     f"obs={row(probe_observations[i])} -> {final[i].tolist()} "
                     f"(action_transform={artifact.transform})")
