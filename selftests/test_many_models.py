"""A model zoo in one run: several --model (or a folder), each its own set of clause tests, and
pytest-xdist workers giving the verdicts of a serial run."""

from __future__ import annotations

import json
import re
import shlex
import shutil

import pytest

from policy_onnx import spec
from policy_onnx.plugin import command_for

from .conftest import CONFORMANCE, REAL_MODEL, REAL_ONNX, ROOT

ALL = {c.id for c in spec.CLAUSES}
FAILS_UNCLAMPED = {"BEH-05", "PAR-01", "PAR-02"}
NOT_CHECKED_UNCLAMPED = {"PORT-02", "PORT-03"}


@pytest.mark.slow  # a whole folder of models: `make test-slow`
def test_a_folder_of_models_is_one_set_of_clauses_per_model(conformance, fixture_models,
                                                            tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ("ppo_default", "dqn"):
        shutil.copy(fixture_models[name], zoo)
    run = conformance.run("--model", str(zoo))
    assert run.ret == 0, run.stdout
    assert set(run.by_policy) == {"ppo_default", "dqn"}
    assert all(set(verdicts) == ALL for verdicts in run.by_policy.values())
    assert run.by_policy["ppo_default"]["PAR-01"] == "passed"
    assert run.by_policy["dqn"]["PAR-01"] == "skipped"  # not applicable to Discrete actions
    assert run.by_policy["dqn"]["DISC-05"] == "passed"
    # The export is a session fixture per model: once each, however the tests are ordered.
    exports = re.findall(r"policy-onnx: exported (\S+) to ", run.stdout)
    assert sorted(exports) == sorted(str(zoo / f"{n}.zip") for n in ("ppo_default", "dqn"))
    assert "2 of 2 policies meet the requested level Standard" in run.stdout
    # Under pytest-xdist the controller names each export when its first report comes back.
    parallel = conformance.run("--model", str(zoo), "-n", "2", "-k", "GRAPH-01")
    assert parallel.ret == 1  # a run of one clause reaches no level
    assert {name: v["GRAPH-01"] for name, v in parallel.by_policy.items()} == {
        "ppo_default": "passed", "dqn": "passed"}
    for name in ("ppo_default", "dqn"):
        assert re.search(rf"policy-onnx: {name} exported by gw\d: \S+{name}\.onnx", parallel.stdout)


def mixed_zoo(conformance, unclamped, report, *args):
    """The real model twice: with its own artifact (conforms) and without its clamp (does not)."""
    return conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX),
                           "--model", str(REAL_MODEL), "--onnx", str(unclamped),
                           "--report", str(report), *args)


def test_one_failing_model_fails_the_run_and_is_named(conformance, unclamped_real, tmp_path):
    report = tmp_path / "report.json"
    run = mixed_zoo(conformance, unclamped_real, report)
    first, second = f"{REAL_MODEL.stem}-1", f"{REAL_MODEL.stem}-2"  # same stem, numbered
    assert run.ret == 1
    assert {cid for cid, v in run.by_policy[first].items() if v == "failed"} == set()
    assert {cid for cid, v in run.by_policy[second].items() if v == "failed"} == FAILS_UNCLAMPED
    assert f"1 of 2 policies meet the requested level Standard; NOT MET: {second}" in run.stdout
    # A zoo's summary lists only what stops a model; -v lists every clause.
    assert run.stdout.count("PAR-01    Standard  failed") == 1
    assert "PAR-01    Standard  passed" not in run.stdout
    # every batch the parity clauses compared was wrong: nothing to run in other engines
    assert {cid for cid, v in run.by_policy[second].items() if v == "skipped"} >= \
        NOT_CHECKED_UNCLAMPED
    assert "PORT-02 not checked: the parity clauses found every batch" in run.stdout
    assert (f"{len(ALL) - len(FAILS_UNCLAMPED) - len(NOT_CHECKED_UNCLAMPED)} other clauses "
            "passed or are not applicable (-v lists them)") in run.stdout
    document = json.loads(report.read_text())
    assert document["level_met"] is False
    assert [(p["name"], p["level_met"], p["artifact"]["path"]) for p in document["policies"]] \
        == [(first, True, str(REAL_ONNX)), (second, False, str(unclamped_real))]
    # A failing clause names the one command that reproduces it on that policy alone.
    pytest_ = shlex.join(command_for("pytest", "pytest"))
    assert (f"Reproduce the search: {pytest_} {CONFORMANCE} --model {REAL_MODEL} "
            f"--onnx {unclamped_real} -k PAR-01") in run.stdout


def _verdicts(document: dict) -> dict:
    return {p["name"]: ({c["id"]: (c["outcome"], c["detail"].splitlines()[:1])
                         for c in p["clauses"]}, p["statistics"], p["level_reached"])
            for p in document["policies"]}


@pytest.mark.slow  # two suite runs in subprocesses: `make test-slow`
def test_xdist_workers_give_the_serial_verdicts(unclamped_real, tmp_path):
    """Both runs are processes of their own, as in CI: hypothesis mixes literal constants of the
    local modules loaded into its draws, so an in-process run (with the self-tests loaded)
    draws other observations than a worker does."""
    import subprocess
    import sys

    def run(report, *args):
        command = [sys.executable, "-m", "pytest", str(CONFORMANCE), "-p", "no:cacheprovider",
                   "--hypothesis-profile", "ci", "--model", str(REAL_MODEL), "--onnx",
                   str(REAL_ONNX), "--model", str(REAL_MODEL), "--onnx", str(unclamped_real),
                   "--report", str(tmp_path / report), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
        return done, json.loads((tmp_path / report).read_text())

    serial, serial_document = run("serial.json", "-p", "no:xdist")
    parallel, parallel_document = run("parallel.json", "-n", "2", "-v")
    assert "created: 2/2 workers" in parallel.stdout  # it really ran on workers
    # Each policy's tests ran on one worker (which alone opened and prepared it).
    workers = {}
    for worker, policy in re.findall(r"^\[(gw\d)\] .*::\w+\[(\S+)-[A-Z]+-\d\d-\w+\]",
                                     parallel.stdout, re.MULTILINE):
        workers.setdefault(policy, set()).add(worker)
    assert sorted(workers) == [f"{REAL_MODEL.stem}-1", f"{REAL_MODEL.stem}-2"], parallel.stdout
    assert all(len(ran_on) == 1 for ran_on in workers.values()), workers
    assert (parallel.returncode, serial.returncode) == (1, 1)
    assert _verdicts(parallel_document) == _verdicts(serial_document)
    assert parallel_document["policies"][1]["level_reached"] == "Basic"
    assert "[gw" not in json.dumps(parallel_document)  # no worker header in the verdicts
    assert "1 of 2 policies meet the requested level Standard" in parallel.stdout


def test_a_zoo_run_survives_a_model_it_cannot_open(conformance, fixture_models, tmp_path):
    """A truncated zip in a folder of models is that model's failing verdict (summary, report,
    exit status); every other model is still checked."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(fixture_models["dqn"], zoo)
    (zoo / "broken.zip").write_bytes(fixture_models["ppo_default"].read_bytes()[:2000])
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(zoo), "--report", str(report))
    assert run.ret == 1, run.stdout + run.stderr
    assert set(run.by_policy) == {"dqn"} and run.by_policy["dqn"]["DISC-05"] == "passed"
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert re.search(r"NOT CHECKED: --model \S+broken\.zip: not a zip archive", run.stdout)
    assert "1 of 2 policies meet the requested level Standard; NOT MET: broken" in run.stdout
    document = json.loads(report.read_text())
    assert not document["level_met"]
    broken = next(p for p in document["policies"] if p["name"] == "broken")
    assert "not a zip archive" in broken["open_failure"] and broken["level_met"] is False
    assert next(p for p in document["policies"] if p["name"] == "dqn")["level_met"] is True
    # Nothing in the zoo opens: still every model's verdict and exit status 1, not a usage error.
    shutil.copy(zoo / "broken.zip", zoo / "dqn.zip")
    assert conformance.run("--model", str(zoo)).ret == 1
    # One model that cannot be opened stays a usage error.
    assert conformance.run("--model", str(zoo / "broken.zip")).ret == 4


@pytest.mark.slow  # a zoo of models: `make test-slow`
def test_a_zoo_model_refused_where_its_tests_run_is_not_checked(conformance, fixture_models,
                                                                 tmp_path):
    """A zoo's models are opened where their tests run (each pytest-xdist worker its own): one
    whose zip reads but whose classes are refused is that model's NOT CHECKED verdict there,
    serially and on workers alike."""
    from .test_bad_input import _custom_class_zip

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(fixture_models["dqn"], zoo)
    _custom_class_zip(zoo / "custom.zip")
    for args in ((), ("-n", "2")):
        report = tmp_path / "report.json"
        run = conformance.run("--model", str(zoo), "--report", str(report), *args)
        assert run.ret == 1, run.stdout + run.stderr
        assert re.search(r"NOT CHECKED: --model \S+custom\.zip: refused to unpickle", run.stdout)
        assert "1 of 2 policies meet the requested level Standard; NOT MET: custom" in run.stdout
        document = json.loads(report.read_text())
        custom = next(p for p in document["policies"] if p["name"] == "custom")
        assert "refused to unpickle" in custom["open_failure"] and not custom["level_met"]
        dqn = next(p for p in document["policies"] if p["name"] == "dqn")
        assert dqn["level_met"] and dqn["model"]["algorithm"] == "DQN"


def test_pytest_xdist_scope_of_a_test_is_its_policy():
    from policy_onnx.scheduling import policy_scope

    clause = "conformance/test_parity.py::test_parity"
    assert policy_scope(f"{clause}[PAR-01-parity]", ["m"]) == "m"  # one policy: no key in the id
    keys = ["walker-v2", "walker-v2-2", "walker"]
    assert policy_scope(f"{clause}[walker-v2-2-PAR-01-parity]", keys) == "walker-v2-2"
    assert policy_scope(f"{clause}[walker-PAR-01-parity]", keys) == "walker"
    # Anything else (a user's own tests in the same run) is spread test by test.
    for other in ("tests/test_mine.py::test_x[walker-PAR-01]", "tests/test_mine.py::test_y"):
        assert policy_scope(other, keys) == other
