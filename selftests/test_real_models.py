"""The real agents vendored in fixtures/real_models/rl-zoo (RL Zoo agents saved by SB3 1.x under
gym, and one by SB3 2.4): they load without gym (the HER agent without an environment), export,
conform, and their observation normalization (per dict key for the goal-dict agent) is
checked."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from policy_onnx.export import export
from policy_onnx.load import load_model
from policy_onnx.normalization import attach, find_statistics

from .conftest import ZOO, sha256

AGENTS = sorted(ZOO.glob("*/*/*.zip"))
NORMALIZED = [p for p in AGENTS if find_statistics(p)]


def _name(path) -> str:
    return f"{path.parts[-3]}-{path.stem}"


def test_the_zoo_sample_is_what_the_tests_expect():
    assert len(AGENTS) == 7 and {_name(p) for p in NORMALIZED} == {
        "ppo-HalfCheetah-v3", "ars-Pendulum-v1", "tqc-FetchReach-v1"}


def test_zoo_agents_load_without_gym():
    code = ("import sys, importlib.util; from policy_onnx.load import load_model; "
            f"[load_model(p) for p in {[str(p) for p in AGENTS]!r}]; "
            "print(importlib.util.find_spec('gym') is None, "
            "any(m == 'gym' or m.startswith('gym.') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stderr


@pytest.mark.parametrize("agent", AGENTS, ids=_name)
def test_zoo_agent_conforms_through_our_export(conformance, agent, tmp_path):
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(agent), "--report", str(report))
    assert run.ret == 0, run.stdout
    assert not run.with_outcome("failed") | run.with_outcome("error")
    statistics = find_statistics(agent)
    described = json.loads(report.read_text())["policies"][0]["normalization"]
    if statistics:  # found from the Zoo's layout, named in the header and the report
        assert f"observation normalization: {statistics} (sha256 {sha256(statistics)}" \
            in run.stdout
        assert (described["path"], described["sha256"]) == (str(statistics), sha256(statistics))
        assert run.verdicts["NORM-01"] == run.verdicts["NORM-02"] == "passed"
    else:
        assert described is None and "not applicable" in run.messages["NORM-01"]
    if agent.parts[-3] == "tqc":  # the HER agent's goal dict, normalized per key
        assert {run.verdicts[c] for c in ("OBS-01", "OBS-02", "OBS-03")} == {"passed"}
        assert described["keys"] == ["achieved_goal", "desired_goal", "observation"]


def test_without_its_statistics_a_normalized_agent_is_checked_raw(conformance):
    """--vecnormalize none: the suite's export and the oracle both skip the normalization."""
    agent = NORMALIZED[0]
    run = conformance.run("--model", str(agent), "--vecnormalize", "none")
    assert run.ret == 0, run.stdout
    assert "observation normalization: none (--vecnormalize none)" in run.stdout
    assert "no VecNormalize statistics were given or found" in run.messages["NORM-01"]


def _shifted(normalization):
    """Statistics of another checkpoint: the mean moved by half a standard deviation."""
    return replace(normalization, mean=normalization.mean + 0.5 * normalization.std,
                   var=normalization.var * 1.5)


FAULTS = {
    "forgotten": lambda n: None,
    "mean_var_swapped": lambda n: replace(n, mean=n.var, var=np.abs(n.mean)),
    "other_checkpoint": _shifted,
}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("agent", NORMALIZED, ids=_name)
def test_normalization_faults_fail_on_real_agents(conformance, tmp_path, agent, fault):
    loaded = load_model(agent)
    attach(loaded, None)
    loaded.normalization = FAULTS[fault](loaded.normalization)
    artifact = export(loaded, tmp_path / "faulty.onnx")
    run = conformance.run("--model", str(agent), "--onnx", str(artifact), profile="mutation")
    assert run.ret == 1
    assert run.verdicts["NORM-01"] == "failed", run.messages
