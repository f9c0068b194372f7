"""`policy-onnx compare OLD NEW`, on reports of real runs of the suite: the clankers pair with its
conforming artifact (under two profiles) and with its artifact unclamped (BEH-05, PAR-01 and
PAR-02 fail)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from policy_onnx import __version__
from policy_onnx.__main__ import main

from .conftest import REAL_MODEL, REAL_ONNX, ci_example_step

RUNS = {  # name -> (artifact, hypothesis profile); the unclamped one is the fixture's
    "conforming": (REAL_ONNX, "ci"),
    "conforming_quick": (REAL_ONNX, "mutation"),
    "unclamped": (None, "mutation"),
}
_written: dict[str, object] = {}  # the reports, written once a session (three suite runs)


@pytest.fixture
def reports(conformance, tmp_path_factory, unclamped_real):
    for name, (artifact, profile) in RUNS.items():
        if name not in _written:
            path = tmp_path_factory.mktemp("compare") / f"{name}.json"
            run = conformance.run("--model", str(REAL_MODEL), "--onnx",
                                  str(artifact or unclamped_real), "--report", str(path),
                                  profile=profile)
            assert run.ret == (1 if name == "unclamped" else 0), run.stdout
            _written[name] = path
    return _written


def compare(capsys, *args) -> tuple[int, str, str]:
    status = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


def margins(path) -> dict[str, float]:
    [policy] = json.loads(path.read_text())["policies"]
    return {c["id"]: c["margin"]["worst_ratio"] for c in policy["clauses"] if c["margin"]}


def test_two_conforming_runs_are_no_regression(reports, capsys):
    old, new = reports["conforming_quick"], reports["conforming"]
    status, out, err = compare(capsys, old, new)
    assert (status, err) == (0, ""), out
    assert f"old: {old} (policy-onnx {__version__}, profile mutation, level Standard met)" in out
    assert "note: hypothesis_profile differs (mutation -> ci)" in out
    assert f"{REAL_MODEL.stem}:\n  level reached: Extended -> Extended\n  no clause changed " \
           "outcome\n" in out
    was, now = margins(old), margins(new)
    assert set(was) == set(now) == {"PAR-01", "PAR-02", "PORT-02", "PORT-03"}
    for clause_id in was:  # every margin, with its growth
        assert (f"  {clause_id} worst ratio to tolerance: {was[clause_id]:.3g} -> "
                f"{now[clause_id]:.3g} (x{now[clause_id] / was[clause_id]:.3g})\n") in out
    assert out.endswith("no regression\n")


def test_a_clause_that_now_fails_is_a_regression(reports, capsys):
    old, new = reports["conforming"], reports["unclamped"]
    status, out, _ = compare(capsys, old, new)
    assert status == 1
    for clause_id in ("BEH-05", "PAR-01", "PAR-02"):
        assert f"  {clause_id}: passed -> failed  REGRESSED\n" in out
    assert "  level reached: Extended -> Basic  REGRESSED\n" in out
    assert re.search(r"  PAR-01 worst ratio to tolerance: [0-9.e-]+ -> [0-9.e+]+ \(x[0-9.e+]+\)",
                     out)
    assert out.endswith(f"REGRESSED (4):\n  {REAL_MODEL.stem}: level Extended -> Basic\n"
                        f"  {REAL_MODEL.stem} BEH-05 passed -> failed\n"
                        f"  {REAL_MODEL.stem} PAR-01 passed -> failed\n"
                        f"  {REAL_MODEL.stem} PAR-02 passed -> failed\n")
    # The other way round is a fix, not a regression.
    status, out, _ = compare(capsys, new, old)
    assert status == 0 and "  PAR-01: failed -> passed\n" in out and "REGRESSED" not in out


def _edited(path, tmp_path, name: str, **worst: float | None) -> object:
    """A copy of a real report with the worst ratios of some clauses set by hand (None: not
    finite, as the report writes an inf or NaN ratio)."""
    document = json.loads(path.read_text())
    for clause in document["policies"][0]["clauses"]:
        if clause["id"].replace("-", "_") in worst:
            ratio = worst[clause["id"].replace("-", "_")]
            clause["margin"]["worst_ratio"] = ratio
            clause["margin"]["worst_ratio_finite"] = ratio is not None
    edited = tmp_path / name
    edited.write_text(json.dumps(document))
    return edited


def test_a_margin_that_grew_past_the_factor_is_a_regression(reports, capsys, tmp_path):
    """The new report is the real conforming one with PAR-01's worst ratio edited to 2.5 times
    the old one's: still passing, but the margin shrank."""
    old = reports["conforming"]
    worst = margins(old)["PAR-01"]
    assert 0 < worst < 0.4  # so that 2.5 times it still passes
    new = _edited(old, tmp_path, "grown.json", PAR_01=worst * 2.5)
    status, out, _ = compare(capsys, old, new)  # without --max-growth: shown, never fails
    assert status == 0 and f"-> {worst * 2.5:.3g} (x2.5)\n" in out
    status, out, _ = compare(capsys, old, new, "--max-growth", "2")
    assert status == 1
    assert f"  PAR-01 worst ratio to tolerance: {worst:.3g} -> {worst * 2.5:.3g} (x2.5)  GREW " \
           "past x2\n" in out
    assert "  PAR-02 worst ratio to tolerance" in out and "x1)  GREW" not in out
    assert out.endswith(f"REGRESSED (1):\n  {REAL_MODEL.stem} PAR-01 worst ratio "
                        f"{worst:.3g} -> {worst * 2.5:.3g}, more than x2\n")
    status, out, _ = compare(capsys, old, new, "--max-growth", "3")
    assert status == 0 and out.endswith("no regression (no worst ratio grew more than x3)\n")


@pytest.mark.parametrize("old_ratio, new_ratio, status", [
    (0.0, 1.5e-6, 0),   # an old 0 counts as 1e-6: x1.5
    (0.0, 3e-6, 1),     # x3
    (1e-9, 3e-6, 1),    # below the floor too
    (0.01, None, 1),    # not finite now: grew without bound
    (None, None, 0),    # not finite then and now
])
def test_growth_from_a_ratio_of_zero_or_to_infinity(reports, capsys, tmp_path, old_ratio,
                                                    new_ratio, status):
    """Both reports are the real conforming one with PAR-02's worst ratio edited."""
    old = _edited(reports["conforming"], tmp_path, "old.json", PAR_02=old_ratio)
    new = _edited(reports["conforming"], tmp_path, "new.json", PAR_02=new_ratio)
    found, out, _ = compare(capsys, old, new, "--max-growth", "2")
    assert found == status, out
    line = next(line for line in out.splitlines() if line.startswith("  PAR-02 worst"))
    assert ("GREW past x2" in line) == bool(status)
    if new_ratio is None:
        assert "-> not finite" in line
    else:
        growth = new_ratio / max(old_ratio, 1e-6)
        assert math.isclose(float(re.search(r"\(x([0-9.e+-]+)\)", line).group(1)), growth,
                            rel_tol=1e-2)


def test_policies_in_one_report_only_are_named(reports, capsys, tmp_path):
    document = json.loads(reports["conforming"].read_text())
    other = json.loads(json.dumps(document["policies"][0]))
    other["name"] = "walker"
    document["policies"].append(other)  # the real policy again, under another name
    both = tmp_path / "both.json"
    both.write_text(json.dumps(document))
    status, out, _ = compare(capsys, both, reports["conforming"])
    assert status == 0 and "only in the old report: walker\n" in out
    status, out, _ = compare(capsys, reports["conforming"], both)
    assert status == 0 and "only in the new report: walker\n" in out


def test_unusable_input_is_one_line_of_error(reports, capsys, tmp_path):
    report = reports["conforming"]
    # A real JSON of the suite that is no report: the counterexample the unclamped run saved.
    counterexample = reports["unclamped"].parent / "counterexamples" / REAL_MODEL.stem / \
        "PAR-01.json"
    assert counterexample.is_file()
    not_a_report = tmp_path / "other.json"
    not_a_report.write_text('{"observations": []}')
    newer = tmp_path / "newer.json"
    newer.write_text(report.read_text().replace('"report_version": 1', '"report_version": 2'))
    renamed = tmp_path / "renamed.json"
    document = json.loads(report.read_text())
    document["policies"][0].update(name="walker", action_space="Discrete")
    renamed.write_text(json.dumps(document))
    cases = {
        tmp_path / "nope.json": "nope.json: no such file",
        not_a_report: "other.json: not a policy-onnx JSON report",
        REAL_MODEL: "not readable as JSON",
        newer: f"a report of layout 2 (policy-onnx {__version__}); this policy-onnx reads "
               "layout 1",
        renamed: "have no policy in common (old: walker; new: cartpole_ppo_model)",
        counterexample: "PAR-01.json: not a policy-onnx JSON report",
    }
    for path, message in cases.items():
        status, out, err = compare(capsys, path, report)
        assert (status, out) == (2, ""), err
        assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    with pytest.raises(SystemExit) as usage:
        main(["compare", str(report), str(report), "--max-growth", "0.5"])
    assert usage.value.code == 2
    assert "--max-growth: 0.5: a factor of at least 1" in capsys.readouterr().err


@pytest.mark.slow  # runs the suite again, beyond the shared reports
def test_the_ci_example_compares_with_the_last_release(reports, tmp_path):
    """The step runs as written in a project laid out as the workflow leaves it (the suite's
    venv as .policy-onnx: this checkout's)."""
    script = ci_example_step("Compare with the last release")
    (tmp_path / ".policy-onnx").symlink_to(Path(sys.prefix))
    (tmp_path / "conformance").mkdir()
    (tmp_path / "conformance" / "report.json").write_bytes(reports["unclamped"].read_bytes())
    env = {**os.environ, "LAST_RELEASE_REPORT": "reports/last-release.json"}

    def step():
        return subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)

    first = step()  # no release yet
    assert first.returncode == 0, first.stderr
    assert first.stdout == "no reports/last-release.json: nothing to compare with yet\n"
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "last-release.json").write_bytes(reports["conforming"].read_bytes())
    regressed = step()
    assert regressed.returncode == 1, regressed.stdout + regressed.stderr
    kept = (tmp_path / "conformance" / "compare.txt").read_text()  # uploaded with the report
    assert kept == regressed.stdout and "  PAR-01: passed -> failed  REGRESSED" in kept
    (tmp_path / "conformance" / "report.json").write_bytes(reports["conforming"].read_bytes())
    same = step()
    assert same.returncode == 0 and same.stdout.endswith(
        "no regression (no worst ratio grew more than x10)\n"), same.stdout + same.stderr


def _biased(tmp_path, delta: float) -> Path:
    """The real artifact with the bias of its first action element moved by `delta`: every row
    whose mean is not clamped is off by delta (the tolerance is 1e-5 for its [-1, 1] bounds)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(REAL_ONNX))
    [bias] = [i for i in proto.graph.initializer if i.name == "policy.action_net.bias"]
    values = numpy_helper.to_array(bias).copy()
    values[0] += delta
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    path = tmp_path / f"biased-{delta:g}.onnx"
    onnx.save(proto, str(path))
    return path


@pytest.mark.slow  # runs the suite again, beyond the shared reports
def test_a_creeping_export_is_caught_before_it_fails(reports, conformance, capsys, tmp_path):
    """The issue's degraded artifact: weights perturbed so that the worst error rises from far
    below the tolerance to just below it (a pass: only --max-growth catches it), then past it."""
    old = reports["conforming_quick"]  # the same profile: the same draws
    before = margins(old)["PAR-01"]
    new = {}
    for delta in (4e-6, 2e-5):
        new[delta] = tmp_path / f"{delta:g}.json"
        conformance.run("--model", str(REAL_MODEL), "--onnx", str(_biased(tmp_path, delta)),
                        "--report", str(new[delta]), profile="mutation")
    creeping = margins(new[4e-6])["PAR-01"]
    assert before < 0.1 and 0.3 < creeping < 1, (before, creeping)
    status, out, _ = compare(capsys, old, new[4e-6])
    assert status == 0 and "no clause changed outcome" in out  # still conforming
    status, out, _ = compare(capsys, old, new[4e-6], "--max-growth", "5")
    assert status == 1
    assert (f"  PAR-01 worst ratio to tolerance: {before:.3g} -> {creeping:.3g} "
            f"(x{creeping / before:.3g})  GREW past x5\n") in out
    status, out, _ = compare(capsys, old, new[2e-5])
    assert status == 1 and "  PAR-01: passed -> failed  REGRESSED\n" in out
    assert margins(new[2e-5])["PAR-01"] > 1
