"""The real agents vendored in fixtures/real_models/rl-zoo (RL Zoo agents saved by SB3 1.x under
gym, an SB3 1.0 HER agent, one saved by SB3 2.4): the tree as it lies on disk gets one verdict
per agent, every agent conforms with the statistics it was trained behind, faulty
normalizations fail, and rows where predict()'s own float32 network can overflow are not
blamed on the artifact (two agents failed their own export there)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import onnx
import pytest

from policy_onnx.artifact import Artifact
from policy_onnx.export import export
from policy_onnx.layouts import find_statistics
from policy_onnx.load import load_model
from policy_onnx.model import Reference
from policy_onnx.normalization import attach
from policy_onnx.parity import ParityStats, compare_any

from .conftest import ZOO, sha256
from .mutants import _observations_clipped

AGENTS = sorted(ZOO.glob("*/*/*.zip"))
NORMALIZED = [p for p in AGENTS if find_statistics(p)]
HOPPER = ZOO / "sac" / "Hopper-v3_1" / "Hopper-v3.zip"
LUNAR_LANDER = ZOO / "dqn" / "LunarLander-v2_1" / "LunarLander-v2.zip"
OLD_HER = ZOO / "her" / "FetchReach-v1_1" / "FetchReach-v1.zip"


def _name(path) -> str:
    return f"{path.parts[-3]}/{path.parts[-2]}"


BY_NAME = {_name(p): p for p in AGENTS}


def test_the_zoo_sample_is_what_the_tests_expect():
    assert len(AGENTS) == 10 and {_name(p) for p in NORMALIZED} == {
        "ppo/HalfCheetah-v3_1", "ars/Pendulum-v1_1", "tqc/FetchReach-v1_1",
        "her/FetchReach-v1_1"}


def test_zoo_agents_load_without_gym():
    code = ("import sys, importlib.util; from policy_onnx.load import load_model; "
            f"[load_model(p) for p in {[str(p) for p in AGENTS]!r}]; "
            "print(importlib.util.find_spec('gym') is None, "
            "any(m == 'gym' or m.startswith('gym.') for m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stderr


@pytest.mark.slow  # ten agents exported and checked: `make test-slow`
def test_a_zoo_tree_gets_one_verdict_per_agent_through_our_export(conformance, tmp_path):
    """`--model <root>` of the tree as it lies on disk (with a run's best model and checkpoint,
    and a Hub metrics archive, which are not agents), on two pytest-xdist workers: every agent
    named by its algorithm and run, conforming, with its statistics named in the header, the
    summary and the report."""
    tree = tmp_path / "rl-trained-agents"
    shutil.copytree(ZOO, tree)
    run_folder = tree / "ppo" / "HalfCheetah-v3_1"
    shutil.copy(run_folder / "HalfCheetah-v3.zip", run_folder / "best_model.zip")
    shutil.copy(run_folder / "HalfCheetah-v3.zip", run_folder / "rl_model_1000_steps.zip")
    shutil.copy(ZOO / "LICENSE", tree / "a2c" / "CartPole-v1_1" / "train_eval_metrics.zip")
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(tree), "--report", str(report), "-n", "2")
    assert run.ret == 0, run.stdout
    assert set(run.by_policy) == {_name(p) for p in AGENTS}
    assert "passed over: 2 best model(s) and checkpoint(s) of RL Zoo runs" in run.stdout
    assert "10 of 10 policies meet the requested level Standard" in run.stdout
    document = json.loads(report.read_text())
    for policy in document["policies"]:
        outcomes = {c["id"]: c["outcome"] for c in policy["clauses"]}
        assert policy["level_met"] and "failed" not in outcomes.values(), policy["name"]
        statistics = find_statistics(tree / BY_NAME[policy["name"]].relative_to(ZOO))
        described = policy["normalization"]
        if statistics is None:
            assert described is None, policy["name"]
            continue
        # named in the header (before a worker opened it), the summary and the report
        assert (described["path"], described["sha256"]) == (str(statistics), sha256(statistics))
        assert f"{policy['name']}: observation normalization: {statistics} (sha256 " \
            f"{sha256(statistics)}; read where its tests run)" in run.stdout
        assert f"observation normalization: {statistics} (sha256 {sha256(statistics)}, " \
            "clip_obs" in run.stdout
        assert outcomes["NORM-01"] == outcomes["NORM-02"] == "passed", policy["name"]
    by_name = {p["name"]: p for p in document["policies"]}
    # The SB3 1.0 HER agent: its Box is ObsDictWrapper's observation then desired goal, each
    # normalized with its own key's statistics.
    assert by_name["her/FetchReach-v1_1"]["normalization"]["keys"] == \
        ["observation", "desired_goal"]
    assert by_name["tqc/FetchReach-v1_1"]["normalization"]["keys"] == \
        ["achieved_goal", "desired_goal", "observation"]
    assert {c["id"]: c["outcome"] for c in by_name["tqc/FetchReach-v1_1"]["clauses"]}["OBS-03"] \
        == "passed"
    # Where predict()'s own network overflows, rows are counted apart, not compared.
    assert by_name["sac/Hopper-v3_1"]["statistics"]["PAR-01"]["predict_overflows"] > 0
    assert by_name["dqn/LunarLander-v2_1"]["statistics"]["DISC-05"]["predict_overflows"] > 0


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


# --- where predict() cannot decide -----------------------------------------------------------
@pytest.mark.parametrize("agent", [HOPPER, LUNAR_LANDER], ids=_name)
def test_where_predict_can_decide_onnx_runtime_agrees(agent, tmp_path):
    """Far observations of two real agents: where predict()'s float32 network can overflow,
    torch and ONNX Runtime really disagree (the rows the suite must not compare); everywhere
    else the suite's own export agrees with predict(). Whether a row can be decided does not
    depend on the batch it is drawn in."""
    reference = Reference(load_model(agent))
    artifact = Artifact(export(reference.loaded, tmp_path / "agent.onnx"))
    rows = reference.domain.far(np.random.default_rng(0), 4000)
    decided = reference.decidable(rows)
    assert 0 < (~decided).sum() < len(rows)
    # the far regime keeps its power: many compared rows are far past 1e4
    assert (np.abs(rows[decided]).max(axis=1) > 1e20).sum() > len(rows) // 10
    alone = np.array([reference.decidable(rows[i:i + 1])[0] for i in range(0, len(rows), 37)])
    assert (alone == decided[::37]).all()
    assert compare_any(reference, artifact, rows[decided], ParityStats(), "PAR-01") is None
    undecided = rows[~decided]
    finite = np.isfinite(reference.examine(undecided)[0]).all(axis=1)
    problem = compare_any(reference, artifact, undecided[finite], ParityStats(), "PAR-01")
    assert problem is not None and "near float32's limits" in problem.causes, problem


def test_far_observations_still_catch_a_clipping_artifact_on_an_overflowing_agent(
        conformance, tmp_path):
    """The rows predict() cannot decide are few: an artifact that clips observations at 1e4
    still fails on the agent whose far rows overflow."""
    base = export(load_model(HOPPER), tmp_path / "hopper.onnx")
    clipped = tmp_path / "clipped.onnx"
    onnx.save(_observations_clipped(onnx.load(str(base))), str(clipped))
    run = conformance.run("--model", str(HOPPER), "--onnx", str(clipped), profile="mutation")
    assert run.ret == 1
    assert run.with_outcome("failed") == {"PAR-01"}, run.messages


# --- statistics: found by layout, per HER key, honest messages --------------------------------
def test_statistics_that_do_not_fit_are_refused_without_blame_or_a_raw_verdict(conformance,
                                                                                tmp_path):
    """Statistics found beside a model that do not fit it: the message names the file as
    found (no option the user did not give), says they do not fit, claims nothing about whose
    they are, and offers no way to a verdict without them."""
    folder = tmp_path / "agent"
    (folder / "FetchReach-v1").mkdir(parents=True)
    shutil.copy(OLD_HER, folder)
    statistics = folder / "FetchReach-v1" / "vecnormalize.pkl"
    shutil.copy(find_statistics(BY_NAME["ppo/HalfCheetah-v3_1"]), statistics)
    run = conformance.run("--model", str(folder / "FetchReach-v1.zip"))
    assert run.ret == 4
    assert run.stderr.startswith(f"ERROR: {statistics} (VecNormalize statistics found beside "
                                 "the model): statistics of shape (17,)"), run.stderr
    for wrong in ("--vecnormalize none", f"--vecnormalize {statistics}", "another model"):
        assert wrong not in run.stderr
    assert "do not fit its observation" in run.stderr and "--vecnormalize PKL" in run.stderr
    # Statistics per dict key for a model whose observation is one Box (not an SB3 1.0 HER
    # agent): refused, the keys named.
    tqc_statistics = find_statistics(ZOO / "tqc" / "FetchReach-v1_1" / "FetchReach-v1.zip")
    run = conformance.run("--model", str(HOPPER), "--vecnormalize", str(tqc_statistics))
    assert run.ret == 4
    assert f"--vecnormalize {tqc_statistics}: statistics per dict key (achieved_goal, " \
        "desired_goal, observation), but the model's observation is one Box(" in run.stderr


def test_a_model_trained_normalized_without_its_statistics_is_refused(conformance, tmp_path):
    """The Zoo's configuration says the run normalized observations, but the statistics are
    gone: no verdict on observations the policy never saw."""
    run_folder = tmp_path / "ppo" / "HalfCheetah-v3_1"
    shutil.copytree(ZOO / "ppo" / "HalfCheetah-v3_1", run_folder)
    (run_folder / "HalfCheetah-v3" / "vecnormalize.pkl").unlink()
    run = conformance.run("--model", str(run_folder / "HalfCheetah-v3.zip"))
    assert run.ret == 4
    assert "trained with its observations normalized by VecNormalize" in run.stderr
    assert "config.yml says normalize" in run.stderr and "--vecnormalize PKL" in run.stderr
