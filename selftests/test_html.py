"""The HTML page of a run (--html), opened in a real browser: Debian's Chromium, driven by
Playwright through its executable (no browser is downloaded). A passing run (the real clankers
pair) and a failing one (its artifact without the clamp): no console errors, no network
request, the verdict and every clause row there, every plot drawn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from policy_onnx import spec
from policy_onnx.html import PageWriter
from policy_onnx.record import PolicyRecord, RunRecord, Verdict

from .conftest import REAL_MODEL, REAL_ONNX, ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOTS = ROOT / "build" / "html-report"  # kept by CI as an artifact

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium "
                                    "(apt-get install -y chromium; .ci/run installs it)")


def _open(page_path: Path, screenshot: Path):
    """The page as Chromium shows it: (console errors, requests that were not file: or data:,
    clause rows, verdict text, plot images as numpy arrays with their sizes)."""
    from playwright.sync_api import sync_playwright

    from PIL import Image  # matplotlib's dependency
    import io

    errors, requests = [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url)
                if not r.url.startswith(("file:", "data:")) else None)
        page.route("**/*", lambda route: route.continue_()
                   if route.request.url.startswith(("file:", "data:")) else route.abort())
        page.goto(page_path.resolve().as_uri())
        page.wait_for_load_state("load")
        rows = page.eval_on_selector_all("tr.clause", "rows => rows.map(r => "
                                         "[r.dataset.clause, r.className])")
        verdict = page.inner_text("#run-verdict")
        plots = []
        for figure in page.query_selector_all("figure.plot svg"):
            box = figure.bounding_box()
            image = Image.open(io.BytesIO(figure.screenshot())).convert("L")
            plots.append((np.asarray(image, dtype=np.float64), box))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return errors, requests, rows, verdict, plots


@needs_chromium
@pytest.mark.slow  # suite runs and a browser: `make test-slow`
@pytest.mark.parametrize("name", ["passing", "failing", "recurrent"])
def test_the_page_opens_offline_in_chromium(conformance, fixture_models, tmp_path,
                                            unclamped_real, name):
    """The real pair, its artifact without the clamp, and a recurrent policy's own export
    (its error against the rollout step)."""
    page_path = tmp_path / "page.html"
    pair = {"passing": ("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX)),
            "failing": ("--model", str(REAL_MODEL), "--onnx", str(unclamped_real)),
            "recurrent": ("--model", str(fixture_models["recurrent_ppo"]))}[name]
    broken = name == "failing"
    report = tmp_path / "report.json"
    run = conformance.run(*pair, "--html", str(page_path), "--report", str(report),
                          profile="mutation" if name != "passing" else "ci")
    assert run.ret == (1 if broken else 0), run.stdout
    assert f"page: {page_path}" in run.stdout
    errors, requests, rows, verdict, plots = _open(page_path, SCREENSHOTS / f"{name}.png")
    assert errors == [] and requests == []
    assert verdict == ("Requested level Standard: NOT MET" if broken
                       else "Requested level Standard: met")
    assert [clause for clause, _ in rows] == [c.id for c in spec.CLAUSES]
    outcomes = {clause: classes.split()[1] for clause, classes in rows}
    assert outcomes == run.verdicts
    text = page_path.read_text()
    [policy] = json.loads(report.read_text())["policies"]
    margins = {c["id"]: c["margin"] for c in policy["clauses"] if c["margin"]}
    compared = [c for c in margins if f'class="margin" data-clause="{c}"' in text]
    assert compared == list(margins)
    assert ({"REC-02"} if name == "recurrent" else {"PAR-01", "PAR-02"}) <= set(compared)
    if not broken:  # the PORT clauses ran again what the parity clauses compared
        assert {"PORT-02", "PORT-03"} <= set(compared)
    # a histogram per compared clause, and a recurrent one's error against the step
    assert len(plots) == len(margins) + sum(bool(m.get("worst_by_step"))
                                            for m in margins.values())
    for pixels, box in plots:
        assert (round(box["width"]), round(box["height"])) == (614, 250)  # 6.4 x 2.6 in
        assert pixels.std() > 10  # drawn: bars, axes and text, not a blank box
    for clause in policy["clauses"]:  # the page shows the margins the JSON report holds
        if clause["margin"] and clause["margin"]["worst_ratio_finite"]:
            assert f"<b>{clause['margin']['worst_ratio']:.3g}x tolerance</b>" in text, clause
    if name == "recurrent":
        assert "error against the rollout step" in text
    else:
        assert "mean outside the bounds" in text
    if broken:  # the counterexample and the command that replays it
        assert "obs       = [" in text and "replay it:" in text
    assert "<script" not in text and "http" not in text.replace("http://www.w3.org/", "")


def test_html_without_matplotlib_is_a_usage_error(conformance, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "--html",
                          str(tmp_path / "page.html"))
    assert run.ret == 4  # usage error
    assert "pip install policy-onnx[report]" in run.stderr


def _a_run() -> RunRecord:
    policy = PolicyRecord("m.zip", margins={"PAR-01": {
        "worst_ratio": 0.25, "worst_ratio_finite": True, "action_element": 0, "observations": 9,
        "ratio_histogram": {"bins": ["<0.1", "0.1-1", ">1"], "counts": [5, 4, 0]}}})
    for clause in spec.CLAUSES:
        policy.by_clause[clause.id] = Verdict(clause.id, clause.level.label, clause.title,
                                              "passed", "")
    return RunRecord({"spec_version": spec.SPEC_VERSION}, spec.Level.STANDARD, [policy])


@pytest.mark.parametrize("child", ["writes it", "is gone"])
def test_the_page_is_written_by_its_child_or_here(tmp_path, child):
    """The child process draws and writes the page; where it cannot, this process does."""
    writer = PageWriter()
    if child == "is gone":
        writer.child.kill()
    writer.write(tmp_path / "page.html", _a_run())
    assert (writer.child.returncode == 0) == (child == "writes it")
    text = (tmp_path / "page.html").read_text()
    assert "Requested level Standard: met" in text and text.count("<svg") == 1
    assert "<b>0.25x tolerance</b>" in text
