"""DISC clauses (Extended): discrete, multi-discrete and multi-binary actions."""

import numpy as np

from policy_onnx import metadata
from policy_onnx.check import clause_test, fail, require, row, running
from policy_onnx.parity import check_parity
from policy_onnx.strategies import EVERYWHERE, batches


def _declared(artifact):
    values = artifact.metadata.get("action_space", [])
    try:
        return metadata.parse_discrete(values[0]) if len(values) == 1 else None
    except ValueError:
        return None


def _space(policy, artifact):
    """The discrete space the actions must belong to: the model's, else the declared one."""
    if policy.reference is not None:
        return metadata.describe_space(policy.reference.action_space)
    return _declared(artifact)


def _row_size(space) -> int | None:
    if space is None:
        return None
    return len(space["nvec"]) if space["type"] == "MultiDiscrete" else space.get("n")


@clause_test("DISC-01")
def test_discrete_output_dtype(clause, policy, artifact):
    expected = "FLOAT" if policy.action_kind == "MultiBinary" else "INT64"
    if artifact.action is None:
        fail(clause, "there is no action output (see GRAPH-04)")
    if artifact.action.type_name != expected:
        fail(clause, f"{artifact.action.name} is {artifact.action.type_name}, but predict() "
                     f"returns {expected.lower()} actions for a {policy.action_kind} space")


@clause_test("DISC-02")
def test_discrete_output_shape(clause, policy, artifact):
    if artifact.action is None:
        fail(clause, "there is no action output (see GRAPH-04)")
    dims = artifact.action.dims
    if policy.action_kind == "Discrete":
        if len(dims) != 1:
            fail(clause, f"action is {list(dims)}, but a Discrete action is [batch]")
        return
    size = _row_size(_space(policy, artifact))
    if len(dims) != 2 or not isinstance(dims[1], int) or (size and dims[1] != size):
        fail(clause, f"action is {list(dims)}, but a {policy.action_kind} action is "
                     f"[batch, {size or 'k'}]")


@clause_test("DISC-03")
def test_discrete_action_space(clause, policy, artifact):
    problems = [p for p in metadata.key_problems("action_space", artifact)
                if "is present" in p or "is missing" in p]
    values = artifact.metadata.get("action_space", [])
    if not problems:
        try:
            space = metadata.parse_discrete(values[0])
        except ValueError as exc:
            problems.append(f"action_space = {values[0]!r}: {exc}")
        else:
            size = _row_size(space) if space["type"] != "Discrete" else 1
            if artifact.act_dim is not None and size != artifact.act_dim:
                problems.append(f"action_space {values[0]} has {size} elements per action, the "
                                f"output {artifact.act_dim}")
    transform = artifact.metadata.get("action_transform", ["none"])
    if transform != ["none"]:
        problems.append(f"action_transform is {transform}, must be 'none' for discrete actions")
    require(clause, problems)


@clause_test("DISC-04")
def test_discrete_valid_actions(clause, policy, artifact, probe_observations):
    space = _space(policy, artifact)
    if space is None:
        fail(clause, "action_space is missing or malformed, so there is no space (see DISC-03)")
    with running(clause):
        actions = artifact.final_action(probe_observations).reshape(len(probe_observations), -1)
    if space["type"] == "Discrete":
        low, high = space["start"], space["start"] + space["n"] - 1
    elif space["type"] == "MultiDiscrete":
        low, high = 0, np.asarray(space["nvec"]) - 1
    else:
        low, high = 0, 1
    valid = (actions == np.round(actions)) & (actions >= low) & (actions <= high)
    if not valid.all():
        i = int(np.argmax(~valid.all(axis=1)))
        fail(clause, f"{int((~valid.all(axis=1)).sum())} of {len(actions)} actions are not in "
                     f"{space}, e.g. obs={row(probe_observations[i])} -> {actions[i].tolist()}")


@clause_test("DISC-05")
def test_discrete_parity(clause, policy, reference, artifact, action_seeds, decisions):
    strategy = batches(reference.domain, (*EVERYWHERE, "each_action"), action_seeds)
    check_parity(clause, reference, artifact, strategy, policy, decisions=decisions,
                 search=reference.choice_search, all_allowed=True)
