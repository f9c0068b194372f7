"""The verdict at a glance, the exit status per requested level, and the JSON report."""

from __future__ import annotations

import json
import re
import shlex
from functools import partialmethod

import pytest

from policy_onnx import spec
from policy_onnx.export import export
from policy_onnx.load import load_model
from policy_onnx.model import Reference
from policy_onnx.plugin import command_for

from .conftest import REAL_MODEL, REAL_ONNX, sha256
from .mutants import MUTANTS
from .test_mutants import materialize


def test_conforming_run_reports_every_clause_and_the_level(conformance, tmp_path):
    report = tmp_path / "out" / "report.json"
    junit = tmp_path / "out" / "junit.xml"
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX),
                          "--report", str(report), "--junitxml", str(junit))
    assert run.ret == 0
    assert "level: Basic PASS, Standard PASS, Extended PASS; requested Standard: met" in run.stdout
    document = json.loads(report.read_text())
    assert document["report_version"] == 1
    assert document["spec_version"] == spec.SPEC_VERSION
    assert document["hypothesis_profile"] == "ci"
    assert document["tolerance"].startswith("|final - predict| <= 1e-05")
    assert (document["level_requested"], document["level_met"]) == ("Standard", True)
    [policy] = document["policies"]
    assert policy["name"] == REAL_MODEL.stem
    assert policy["model"] == {"path": str(REAL_MODEL), "sha256": sha256(REAL_MODEL),
                               "algorithm": "PPO"}
    assert policy["artifact"] == {"path": str(REAL_ONNX), "sha256": sha256(REAL_ONNX),
                                  "exported_by_suite": False}
    assert (policy["action_space"], policy["structure"]) == ("Box", "plain")
    assert (policy["level_reached"], policy["level_met"]) == ("Extended", True)
    assert policy["next_level_blocked_by"] == ""
    assert [c["id"] for c in policy["clauses"]] == [c.id for c in spec.CLAUSES]
    outcomes = {c["id"]: c["outcome"] for c in policy["clauses"]}
    assert outcomes["PAR-01"] == "passed" and outcomes["DISC-05"] == "skipped"
    assert "not applicable" in next(c["detail"] for c in policy["clauses"]
                                    if c["id"] == "DISC-05")
    # the parity clauses, and the PORT clauses that ran what they compared in other engines
    assert set(policy["statistics"]) == {"PAR-01", "PAR-02", "PORT-02", "PORT-03"}
    # each parity clause's first batches, up to 4,096 rows, and the sweep of batch sizes
    assert 4096 < policy["statistics"]["PORT-02"]["observations"] <= 2 * 4096 + 128
    assert policy["statistics"]["PAR-01"]["observations"] >= 10_000
    assert policy["statistics"]["PAR-02"]["mean_outside_bounds"] > 0
    _margins_agree(policy, run.stdout, junit, failing=set())


def _margins_agree(policy: dict, stdout: str, junit, failing: set[str]) -> None:
    """Every parity clause that compared something has a margin, the same in the JSON report,
    the terminal and JUnit XML: its histogram counts the observations the statistics count, and
    its worst ratio is past 1 exactly for the failing clauses."""
    import xml.etree.ElementTree as ET

    junit_margins = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        if "margin_worst_ratio" in properties:
            junit_margins[properties["clause"]] = properties
    clauses = {c["id"]: c for c in policy["clauses"]}
    with_margin = {cid for cid, c in clauses.items() if c["margin"] is not None}
    assert with_margin == set(policy["statistics"]) == set(junit_margins)
    for clause_id in with_margin:
        margin, histogram = clauses[clause_id]["margin"], clauses[clause_id]["ratio_histogram"]
        observations = policy["statistics"][clause_id]["observations"]
        assert margin["observations"] == sum(histogram["counts"]) == observations
        assert len(histogram["bins"]) == len(histogram["counts"]) == 8
        worst = margin["worst_ratio"]
        assert (worst > 1) == (clause_id in failing), (clause_id, worst)
        assert (histogram["counts"][-1] > 0) == (clause_id in failing)
        assert 0 <= max(margin["worst_by_element"]) == worst
        assert len(margin["observation"]) == 4 and len(margin["final"]) == 2  # cartpole, 2 actions
        left = margin["mean_left_bounds_by_element"]  # per action element, at most the total
        assert len(left) == 2 and max(left) <= policy["statistics"][clause_id][
            "mean_outside_bounds"] <= sum(left)
        assert float(junit_margins[clause_id]["margin_worst_ratio"]) == worst
        assert junit_margins[clause_id]["margin_action_element"] == str(margin["action_element"])
        assert (f"{clause_id} worst {worst:.2g}x tolerance (action {margin['action_element']}) "
                f"over {observations:,} observations") in stdout


@pytest.mark.parametrize("level, status, verdict", [
    ("basic", 0, "requested Basic: met"),
    ("standard", 1, "requested Standard: NOT MET"),
    ("extended", 1, "requested Extended: NOT MET"),
])
def test_exit_status_follows_the_requested_level(conformance, tmp_path, unclamped_real, level,
                                                 status, verdict):
    report = tmp_path / "report.json"
    junit = tmp_path / "junit.xml"
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(unclamped_real),
                          "--level", level, "--report", str(report), "--junitxml", str(junit),
                          profile="mutation")
    assert run.ret == status
    assert "level: Basic PASS, Standard FAIL (BEH-05 failed, PAR-01 failed, PAR-02 failed)" \
        in run.stdout
    assert verdict in run.stdout
    # pytest says "3 failed": the summary says in one line why the exit status is 0 anyway
    assert ("exit status 0: every policy meets the requested level Basic; the 3 failing clause "
            "test(s) are above it" in run.stdout) == (status == 0)
    document = json.loads(report.read_text())
    [policy] = document["policies"]
    assert (policy["level_reached"], policy["level_met"]) == ("Basic", level == "basic")
    assert document["level_met"] == (level == "basic")
    assert policy["next_level_blocked_by"] == "BEH-05 failed, PAR-01 failed, PAR-02 failed"
    failed = {c["id"]: c["detail"] for c in policy["clauses"] if c["outcome"] == "failed"}
    assert set(failed) == {"BEH-05", "PAR-01", "PAR-02"}
    assert "obs       = [" in failed["PAR-01"]  # the failing observation is in the report
    _margins_agree(policy, run.stdout, junit, failing={"PAR-01", "PAR-02"})


def test_onnx_alone_cannot_establish_a_level(conformance):
    """Clauses skipped for want of the model are not verified: no level is claimed."""
    run = conformance.run("--onnx", str(REAL_ONNX), "--level", "basic")
    assert run.ret == 1
    assert "level: Basic FAIL (GRAPH-11 skipped, GRAPH-12 skipped, META-03 skipped)" in run.stdout


def test_discrete_policy_needs_its_extended_parity_for_standard(conformance, fixture_models,
                                                                tmp_path):
    """A DQN artifact that picks the wrong action cannot pass as Standard on its Box clauses."""
    argmin = next(m for m in MUTANTS if m.name == "dqn_argmin")
    base = export(load_model(fixture_models["dqn"]), tmp_path / "dqn.onnx").read_bytes()
    path = materialize(argmin, lambda mutant: base, tmp_path)
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(fixture_models["dqn"]), "--onnx", path,
                          "--report", str(report), profile="mutation")
    assert run.ret == 1
    assert "Standard FAIL (DISC-05 failed" in run.stdout
    # Its margin: beyond the tolerance; predict()'s own closest score gap, in tie tolerances.
    [policy] = json.loads(report.read_text())["policies"]
    [disc] = [c for c in policy["clauses"] if c["id"] == "DISC-05"]
    margin = disc["margin"]
    assert not margin["worst_ratio_finite"] or margin["worst_ratio"] > 1
    assert disc["ratio_histogram"]["counts"][-1] > 0
    assert margin["closest_score_gap"] >= 0 and margin["closest_score_gap_tolerances"] >= 0
    assert margin["closest_score_gap_observation"] is not None
    assert "DISC-05 worst " in run.stdout and "predict()'s closest score gap" in run.stdout


def test_junit_xml_carries_the_clause_of_each_test(conformance, tmp_path):
    import xml.etree.ElementTree as ET

    junit = tmp_path / "conformance.xml"
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "--junitxml",
                          str(junit))
    assert "PytestWarning" not in run.stdout
    cases = ET.parse(junit).getroot().iter("testcase")
    clauses, parity = {}, {}
    for case in cases:
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        clauses[properties["clause"]] = properties["level"]
        assert f"[{properties['clause']}-" in case.get("name")
        assert properties["policy"] == REAL_MODEL.stem
        if "observations" in properties:
            parity[properties["clause"]] = properties
    assert clauses == {c.id: c.level.label for c in spec.CLAUSES}
    # what the parity clauses exercised, and the PORT clauses ran again in other engines
    assert set(parity) == {"PAR-01", "PAR-02", "PORT-02", "PORT-03"}
    assert int(parity["PAR-01"]["observations"]) >= 10_000
    assert int(parity["PAR-02"]["mean_outside_bounds"]) > 0


def test_export_is_announced_while_it_runs(conformance):
    run = conformance.run("--model", str(REAL_MODEL), "-k", "GRAPH-01")
    assert f"policy-onnx: exported {REAL_MODEL} to " in run.stdout


@pytest.mark.parametrize("clause_id", ["PAR-01", pytest.param("REC-02", marks=pytest.mark.slow)])
def test_failing_parity_saves_a_counterexample_that_replays(conformance, tmp_path, fixture_models,
                                                            unclamped_real, clause_id):
    import subprocess
    import sys

    if clause_id == "PAR-01":
        model, broken, conforming = REAL_MODEL, unclamped_real, REAL_ONNX
    else:  # rollouts of a recurrent policy whose artifact swaps its two state outputs
        model = fixture_models["recurrent_ppo"]
        conforming = export(load_model(model), tmp_path / "recurrent.onnx")
        swapped = next(m for m in MUTANTS if m.name == "state_outputs_swapped")
        broken = materialize(swapped, lambda *_: conforming.read_bytes(), tmp_path)
    report = tmp_path / "reports" / "report.json"
    run = conformance.run("--model", str(model), "--onnx", str(broken), "--report", str(report),
                          "-k", clause_id, profile="mutation")
    saved = tmp_path / "reports" / "counterexamples" / model.stem / f"{clause_id}.json"
    replay = shlex.join([*command_for("policy-onnx", "policy_onnx"), "replay", str(saved)])
    assert f"Counterexample: {saved}; replay it: {replay}" in run.stdout
    detail = next(c["detail"] for c in json.loads(report.read_text())["policies"][0]["clauses"]
                  if c["id"] == clause_id)
    assert str(saved) in detail  # the report points at it

    def replay(path):
        return subprocess.run([sys.executable, "-m", "policy_onnx", "replay", str(path)],
                              capture_output=True, text=True, timeout=300)

    still = replay(saved)
    assert still.returncode == 1 and still.stdout.startswith(f"[{clause_id}] "), still.stderr
    fixed = json.loads(saved.read_text())
    fixed["artifact"] = str(conforming)  # the same input against a conforming artifact
    (tmp_path / "fixed.json").write_text(json.dumps(fixed))
    agreed = replay(tmp_path / "fixed.json")
    assert agreed.returncode == 0 and "now agree" in agreed.stdout, agreed.stdout + agreed.stderr


def test_summary_rows_shorten_reasons_at_a_word(conformance, fixture_models):
    run = conformance.run("--model", str(fixture_models["ppo_no_overshoot"]), "-k", "PAR or DISC")
    rows = [line for line in run.stdout.splitlines() if re.match(r"(PAR|DISC)-0\d +\w+ +skipped", line)]
    assert rows
    for row in rows:
        clause_id = row.split()[0]
        detail = re.search(r"  \((.*)\)$", row).group(1)
        reason = run.messages[clause_id].removeprefix("Skipped: ").splitlines()[0]
        if detail != reason:
            assert detail.endswith(" ...") and reason.startswith(detail[:-4])
            assert reason[len(detail) - 4] == " ", (detail, reason)  # cut between words


def test_statistics_count_only_what_both_sides_acted_on(conformance, tmp_path):
    """An export by SB3's documented recipe (input `input`, three unnamed outputs) cannot be
    run as a policy: PAR-01 fails, and no observation is reported as checked."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(REAL_ONNX))
    graph = proto.graph
    renamed = {"obs": "input", "action": "output"}
    for node in graph.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    graph.input[0].name = "input"
    action = graph.output[0]
    action.name = "output"
    graph.node.extend([helper.make_node("Identity", ["output"], [name])
                       for name in ("values", "log_prob")])
    graph.output.extend([helper.make_tensor_value_info(name, action.type.tensor_type.elem_type,
                                                       None) for name in ("values", "log_prob")])
    path = tmp_path / "recipe.onnx"
    onnx.save(proto, str(path))
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(path), "--report",
                          str(report), "-k", "PAR-01", profile="mutation")
    assert run.verdicts["PAR-01"] == "failed"
    assert "cannot tell the observation input and action output apart" in run.messages["PAR-01"]
    assert "observations checked" not in run.stdout
    assert json.loads(report.read_text())["policies"][0]["statistics"] == {}


def test_a_search_stopped_at_its_time_budget_is_told(conformance, fixture_models, tmp_path,
                                                    monkeypatch):
    """The each-action search of a policy with 200 actions stops at its time budget (here a
    quarter of a second, counted as 1 s): the summary and the report say so, and the summary
    names the choices no draw reached as unchecked."""
    monkeypatch.setattr(Reference, "find_each_action",
                        partialmethod(Reference.find_each_action, budget=0.25))
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(fixture_models["maskable_wide"]), "-k", "DISC-05",
                          "--report", str(report))
    assert "the search for each choice STOPPED at its time budget of 1 s, having found" \
        in run.stdout
    unchecked = re.search(r"made (\d+) of its 200 possible choices \((\d+) UNCHECKED: no draw "
                          r"made predict\(\) choose them\)", run.stdout)
    assert unchecked and int(unchecked.group(1)) + int(unchecked.group(2)) == 200, run.stdout
    [policy] = json.loads(report.read_text())["policies"]
    counts = policy["statistics"]["DISC-05"]
    assert counts["search_stopped"] == 1 and 0 < counts["choices_searched"] < 200
