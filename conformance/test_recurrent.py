"""REC clauses (Extended): policies with recurrent state (RecurrentPPO)."""

import numpy as np

from policy_onnx.check import clause_test, fail, require, running
from policy_onnx.parity import check_recurrent_parity
from policy_onnx.strategies import REGIMES, batches


@clause_test("REC-01")
def test_recurrent_interface(clause, artifact):
    inputs = {t.name: t for t in artifact.inputs}
    outputs = {t.name: t for t in artifact.outputs}
    problems = []
    if sorted(inputs) != ["episode_start", "obs", "state_c", "state_h"]:
        problems.append(f"required inputs are {sorted(inputs)}, must be exactly obs, state_h, "
                        "state_c, episode_start")
    if sorted(outputs) != ["action", "next_state_c", "next_state_h"]:
        problems.append(f"outputs are {sorted(outputs)}, must be exactly action, next_state_h, "
                        "next_state_c")
    for name, out_name in (("state_h", "next_state_h"), ("state_c", "next_state_c")):
        tensor = inputs.get(name)
        if tensor is None:
            continue
        dims = tensor.dims
        if (tensor.type_name != "FLOAT" or len(dims) != 3 or not isinstance(dims[0], int)
                or not isinstance(dims[1], str) or not isinstance(dims[2], int)):
            problems.append(f"{name} is {tensor.type_name} {list(dims)}, must be FLOAT "
                            "[layers, batch, hidden] with a symbolic batch")
        elif out_name in outputs and (outputs[out_name].dims[0], outputs[out_name].dims[2]) != (
                dims[0], dims[2]):
            problems.append(f"{out_name} is {list(outputs[out_name].dims)}, {name} is "
                            f"{list(dims)}: the state must keep its shape")
    start = inputs.get("episode_start")
    if start is not None and (start.type_name != "FLOAT" or len(start.dims) != 1):
        problems.append(f"episode_start is {start.type_name} {list(start.dims)}, must be FLOAT "
                        "[batch]")
    require(clause, problems)


@clause_test("REC-02")
def test_recurrent_parity(clause, policy, reference, artifact, decisions):
    # Images are also drawn as pictures (OBS-03's draws, which do not run recurrent policies).
    strategy = batches(reference.domain,
                       REGIMES[:2] + (("structured",) if reference.domain.images else ()))
    check_recurrent_parity(clause, reference, artifact, strategy, policy, decisions)


@clause_test("REC-03")
def test_episode_start_resets(clause, artifact, probe_observations):
    obs = probe_observations[:64]
    with running(clause):
        zero = artifact._zero_state(len(obs))
        rng = np.random.default_rng(0)
        state = [rng.normal(size=zero[n].shape).astype(np.float32) for n in ("state_h", "state_c")]
        reset = artifact.step(obs, *state, np.ones(len(obs), np.float32))
        fresh = artifact.step(obs, zero["state_h"], zero["state_c"], np.zeros(len(obs), np.float32))
    for name, a, b in zip(("action", "next_state_h", "next_state_c"), reset, fresh, strict=True):
        if not np.allclose(a, b, rtol=0, atol=1e-6, equal_nan=True):
            fail(clause, f"{name} with episode_start=1 differs from {name} with a zero state by "
                         f"{float(np.nanmax(np.abs(np.asarray(a) - np.asarray(b)))):.3g}: the "
                         "state is not reset at the start of an episode")
