"""The record of a run (record.py) as one self-contained HTML page: `--html PATH`.

Everything is inline (the plots are SVG drawn by matplotlib, the style a <style> element): the
page loads nothing when opened, works offline and can be kept as a CI artifact. matplotlib is an
optional extra (`pip install policy-onnx[report]`); `available()` says whether it is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import math
import os
import pickle
import re
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np

from . import spec
from .record import PolicyRecord, RunRecord
from .report import write_whole

INSTALL_HINT = "pip install policy-onnx[report]"
SHOWN_ELEMENTS = 64  # observation elements listed in "what was drawn" (the rest are counted)

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; } h3 { margin-top: 1.5em; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
.passed { background: #e3f4e1; } .failed, .error { background: #fbe0e0; }
.skipped { background: #f2f2f2; } tr.clause td:first-child { white-space: nowrap; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; display: inline-block; }
.met { background: #c9ecc4; } .not-met { background: #f6c4c4; }
.level { display: inline-block; padding: 0.3em 0.7em; margin-right: 0.3em; }
.pass { background: #c9ecc4; } .fail { background: #f6c4c4; }
pre { background: #f6f6f6; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
code { font-size: 0.9em; } figure { margin: 0.5em 0; }
"""


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


class PageWriter:
    """Writes the page in a child process started with the run. While the clauses run, the
    child imports matplotlib and draws each parity clause's plots as the clause ends (a
    plugin of the run, this sends them): on the other core, not after the run. At the end it
    is sent the run and writes the page. Where the child cannot, the page is written here."""

    def __init__(self) -> None:
        package_parent = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [package_parent, os.environ.get("PYTHONPATH")]))}
        self.child = subprocess.Popen([sys.executable, "-m", __name__], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)

    def pytest_runtest_logreport(self, report) -> None:
        properties = dict(report.user_properties)
        if "margin" in properties:
            self._send(("plots", properties["clause"], _plotted(properties["margin"])))

    def write(self, path: Path, run: RunRecord) -> None:
        self._send(("page", path, run))
        self._stop(timeout=120)
        if self.child.returncode != 0:
            write_html(path, run)

    def pytest_unconfigure(self) -> None:
        self._stop(timeout=5)  # a run that ended without a page: the child is waiting

    def _stop(self, timeout: float) -> None:
        try:
            self.child.stdin.close()
            self.child.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.child.kill()
            self.child.wait()

    def _send(self, message: tuple) -> None:
        try:
            pickle.dump(message, self.child.stdin)
            self.child.stdin.flush()
        except OSError:  # the child is gone: write() writes the page here
            pass


def write_html(path: Path, run: RunRecord) -> None:
    """Write the page of `run` to `path`, whole or not at all."""
    write_whole(path, render(run))


def render(run: RunRecord) -> str:
    settings = run.settings
    verdict = "met" if run.level_met else "NOT MET"
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>policy-onnx conformance report</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>policy-onnx conformance report</h1>",
        f'<p id="run-verdict" class="verdict {"met" if run.level_met else "not-met"}">'
        f"Requested level {escape(run.requested_level.label)}: {verdict}</p>",
        _table(["suite", "spec", "hypothesis profile", "parity tolerance"],
               [[settings.get("suite_version"), f"POLICY_ONNX_SPEC {settings.get('spec_version')}",
                 settings.get("hypothesis_profile"), settings.get("tolerance")]]),
    ]
    if len(run.policies) > 1:
        parts += ["<h2>All policies</h2>", _table(
            ["policy", "level reached", "requested level"],
            [[f'<a href="#{_anchor(p.key)}">{escape(p.key)}</a>',
              escape(_reached(p)), "met" if p.level_met(run.requested_level) else "NOT MET"]
             for p in run.policies], raw=True)]
    for policy in run.policies:
        parts.append(_policy_section(policy, run.requested_level))
    parts.append("</body></html>")
    return "\n".join(parts)


def _policy_section(policy: PolicyRecord, requested: spec.Level) -> str:
    described = policy.description
    model, artifact = described.get("model") or {}, described.get("artifact") or {}
    out = [f'<section class="policy" id="{_anchor(policy.key)}">',
           f"<h2>{escape(policy.key)}</h2>",
           _table(["", "path", "SHA-256"],
                  [["model", model.get("path"), model.get("sha256")],
                   ["artifact" + (" (exported by the suite)" if artifact.get("exported_by_suite")
                                  else ""), artifact.get("path"), artifact.get("sha256")]])]
    if model.get("algorithm"):
        out.append(f"<p>{escape(str(model['algorithm']))}, {escape(policy.structure)} policy, "
                   f"{escape(policy.action_kind)} actions</p>")
    if policy.open_failure:
        out += [f'<p class="verdict not-met">NOT CHECKED: {escape(policy.open_failure)}</p>',
                "</section>"]
        return "\n".join(out)
    reached, why = policy.level_reached()
    levels = []
    for level in spec.Level:
        ok = reached is not None and level <= reached
        levels.append(f'<span class="level {"pass" if ok else "fail"}">{level.label} '
                      f'{"PASS" if ok else "FAIL"}</span>')
    met = policy.level_met(requested)
    out.append(f'<p class="levels">{"".join(levels)} <span class="verdict '
               f'{"met" if met else "not-met"}">requested {requested.label}: '
               f'{"met" if met else "NOT MET"}</span>'
               + (f" <em>({escape(why)})</em>" if why else "") + "</p>")
    out += ["<h3>Clauses</h3>", _clause_table(policy)]
    for clause_id, margin in sorted(policy.margins.items()):
        out.append(_margin_part(clause_id, margin, policy.statistics.get(clause_id, {})))
    out.append(_coverage_part(policy.coverage))
    if policy.runtimes:
        out += ["<h3>Runtimes (PORT-04)</h3>",
                _table(["runtime", "verdict"], [[engine, verdict.splitlines()[0]]
                                                for engine, verdict in policy.runtimes.items()])]
    failures = [v for v in policy.by_clause.values() if v.outcome in ("failed", "error")]
    if failures:
        out.append("<h3>Failures</h3>")
        for verdict in failures:
            out.append(f'<h4 id="{_anchor(policy.key + "-" + verdict.id)}-failure">'
                       f"{escape(verdict.id)} {escape(verdict.outcome)}</h4>"
                       f"<pre>{escape(verdict.detail)}</pre>")
    out.append("</section>")
    return "\n".join(out)


def _clause_table(policy: PolicyRecord) -> str:
    rows = []
    for clause in spec.CLAUSES:
        verdict = policy.by_clause.get(clause.id)
        if verdict is None:
            continue
        reason = (verdict.detail.splitlines() or [""])[0]
        rows.append(f'<tr class="clause {escape(verdict.outcome)}" data-clause="{clause.id}">'
                    f"<td>{clause.id}</td><td>{clause.level.label}</td>"
                    f"<td>{escape(verdict.outcome)}</td><td>{escape(clause.title)}</td>"
                    f"<td>{escape(reason)}</td></tr>")
    return ('<table class="clauses"><tr><th>clause</th><th>level</th><th>outcome</th>'
            "<th>title</th><th>reason or first line of the failure</th></tr>"
            + "".join(rows) + "</table>")


def _margin_part(clause_id: str, margin: dict, counts: dict) -> str:
    if margin["worst_ratio_finite"]:
        worst = f"{margin['worst_ratio']:.3g}x tolerance"
    else:
        worst = "not finite (NaN or inf)"
    text = (f"worst |final - predict| / tolerance: <b>{worst}</b> (action element "
            f"{margin['action_element']}) over {margin['observations']:,} observations")
    if counts.get("rounding_ties"):
        text += f"; {counts['rounding_ties']:,} rounding ties (excused, in the last bin)"
    if margin.get("closest_score_gap") is not None:
        text += (f"; predict()'s closest score gap to its runner-up "
                 f"{margin['closest_score_gap']:.3g} ({margin['closest_score_gap_tolerances']:,.3g}"
                 f" tie tolerances, action element {margin['closest_score_gap_element']})")
    out = [f'<div class="margin" data-clause="{escape(clause_id)}">',
           f"<h3>{escape(clause_id)}: margin</h3><p>{text}</p>",
           *(f'<figure class="plot">{svg}</figure>'
             for svg in _plots(clause_id, _plotted(margin)))]
    if margin.get("observation") is not None:
        out.append(_table(["worst row", "values"],
                          [["observation", _numbers(margin["observation"])],
                           ["predict()", _numbers(margin["predict"])],
                           ["final action", _numbers(margin["final"])]]))
    drawn = margin.get("drawn")
    if drawn:
        rows = []
        for i, (lo, hi) in enumerate(zip(drawn["observation_low"], drawn["observation_high"])):
            if i == SHOWN_ELEMENTS:
                break
            dlo = (drawn["declared_low"] or [None] * (i + 1))[i]
            dhi = (drawn["declared_high"] or [None] * (i + 1))[i]
            rows.append([i, f"{_bound(dlo, '-inf')} .. {_bound(dhi, 'inf')}",
                         f"{lo:.4g} .. {hi:.4g}"])
        more = len(drawn["observation_low"]) - len(rows)
        out += ["<p>What was drawn: per observation element, the range the compared rows "
                "covered beside the declared bounds"
                + (f" (the first {len(rows)}; {more} more elements)" if more else "") + "</p>",
                _table(["element", "declared bounds", "drawn range"], rows)]
    if "mean_outside_bounds" in counts and counts.get("observations"):
        out.append(f"<p>The mean left the action bounds in {counts['mean_outside_bounds']:,} of "
                   f"{counts['observations']:,} observations.</p>")
    left = margin.get("mean_left_bounds_by_element")
    if left:
        out += ["<p>Per action element, the compared observations whose pre-clip mean left "
                "its bounds</p>",
                _table(["action element", "mean outside the bounds"],
                       [[j, f"{n:,}"] for j, n in enumerate(left)])]
    choices = margin.get("choices")
    if choices:
        keys = sorted(set(choices["predict"]) | set(choices["final"]),
                      key=lambda k: tuple(float(x) for x in k.split(":")))
        out += ["<p>How often predict() and the artifact made each choice "
                "(action element:value)</p>",
                _table(["choice", "predict()", "artifact"],
                       [[k, choices["predict"].get(k, 0), choices["final"].get(k, 0)]
                        for k in keys])]
    out.append("</div>")
    return "\n".join(out)


def _plotted(margin: dict) -> dict:
    """What a clause's plots show of its margin."""
    return {key: margin.get(key) for key in ("ratio_histogram", "observations",
                                              "worst_by_step")}


def _drawn_once(draw):
    """Each plot drawn once: drawn ahead by PageWriter's child, it is not drawn again."""
    drawn: dict[str, list[str]] = {}

    @functools.wraps(draw)
    def once(*args):
        key = json.dumps(args, sort_keys=True)
        if key not in drawn:
            drawn[key] = draw(*args)
        return drawn[key]
    return once


@_drawn_once
def _plots(clause_id: str, plotted: dict) -> list[str]:
    """A parity clause's plots as inline SVG: its ratio histogram and, for a recurrent policy,
    its worst ratio against the rollout step."""
    plots = [_histogram_svg(clause_id, plotted)]
    if plotted["worst_by_step"]:
        plots.append(_steps_svg(clause_id, plotted["worst_by_step"]))
    return plots


def _histogram_svg(clause_id: str, margin: dict) -> str:
    """The ratio histogram as inline SVG: observations per decade of the ratio, log scale, the
    tolerance (ratio 1) as a vertical line."""
    bins, counts = margin["ratio_histogram"]["bins"], margin["ratio_histogram"]["counts"]
    figure = _figure()
    axes = figure.subplots()
    colors = ["#4c9a2a"] * (len(bins) - 1) + ["#c0392b"]
    axes.bar(range(len(bins)), [max(c, 0) for c in counts], color=colors, log=any(counts))
    axes.axvline(len(bins) - 1.5, color="#c0392b", linestyle="--", linewidth=1.5)
    axes.text(len(bins) - 1.6, 0.95, "tolerance", transform=axes.get_xaxis_transform(),
              color="#c0392b", fontsize=8, va="top", ha="right")
    axes.set_xticks(range(len(bins)), bins, fontsize=7)
    axes.set_xlabel("|final - predict| / tolerance (worst element of each observation)",
                    fontsize=8)
    axes.set_ylabel("observations", fontsize=8)
    axes.set_title(f"{clause_id}: {margin['observations']:,} observations", fontsize=9)
    return _svg(figure)


def _steps_svg(clause_id: str, worst_by_step: list) -> str:
    """A recurrent clause's worst ratio at each rollout step as inline SVG, log scale, the
    tolerance (ratio 1) as a horizontal line; steps never compared, or not finite, are gaps."""
    figure = _figure()
    axes = figure.subplots()
    floor = 1e-9  # a ratio of 0 (equal actions) drawn at the bottom of the log scale
    ratios = [np.nan if r is None else max(r, floor) for r in worst_by_step]
    axes.plot(range(len(ratios)), ratios, color="#4c9a2a", marker=".", linewidth=1)
    axes.set_yscale("log")
    axes.axhline(1.0, color="#c0392b", linestyle="--", linewidth=1.5)
    axes.text(0.01, 1.0, "tolerance", transform=axes.get_yaxis_transform(), color="#c0392b",
              fontsize=8, va="bottom")
    axes.set_xlabel("rollout step", fontsize=8)
    axes.set_ylabel("worst |final - predict| / tolerance", fontsize=8)
    axes.set_title(f"{clause_id}: error against the rollout step", fontsize=9)
    return _svg(figure)


def _figure():
    """A plot's figure, 6.4 x 2.6 inches, its margins fixed for tick labels and axis titles
    (fixed, not fitted: fitting draws the figure once more, a third of a plot's cost)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 2.6), dpi=100)
    figure.subplots_adjust(left=0.11, right=0.98, bottom=0.3, top=0.88)
    return figure


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    # matplotlib's RDF block names namespaces by URL; the page needs none of it.
    return re.sub(r"<metadata>.*?</metadata>", "", svg[svg.index("<svg"):], flags=re.DOTALL)


def _coverage_part(coverage: dict | None) -> str:
    if coverage is None:
        return ""
    if coverage.get("not_run"):
        return ("<h3>Decisions in the graph</h3><p>not searched: the graph could not be run "
                f"with its decisions exposed ({escape(str(coverage['not_run']))})</p>")
    rows = [[name.replace("_", " "), ", ".join(map(str, value)) if isinstance(value, list)
             else value] for name, value in coverage.items()
            if name not in ("not_every_way", "not_modelled", "not_run")]
    out = ["<h3>Decisions in the graph</h3>", _table(["", "found"], rows)]
    if coverage.get("not_every_way"):
        out.append("<p>Not seen every way (a fault behind them would go unseen): "
                   + escape(", ".join(coverage["not_every_way"])) + "</p>")
    if coverage.get("not_modelled"):
        out.append("<p>Operations on observation values the search does not model (a decision "
                   "inside them would go unseen): "
                   + escape(", ".join(coverage["not_modelled"])) + "</p>")
    return "\n".join(out)


def _table(header: list, rows: list[list], raw: bool = False) -> str:
    """A table; cells are escaped unless `raw` (cells the caller escaped)."""
    def cell(value) -> str:
        text = "" if value is None else str(value)
        return text if raw else escape(text)
    return ("<table><tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                      for row in rows) + "</table>")


def _numbers(values: list) -> str:
    shown = ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values[:16])
    return f"[{shown}{', ...' if len(values) > 16 else ''}]"


def _bound(value, infinite: str) -> str:
    return infinite if value is None or not math.isfinite(value) else f"{value:.4g}"


def _reached(policy: PolicyRecord) -> str:
    reached, _ = policy.level_reached()
    return reached.label if reached else "none"


def _anchor(key: str) -> str:
    return "policy-" + "".join(c if c.isalnum() else "-" for c in key)


if __name__ == "__main__":  # PageWriter's child
    if hasattr(os, "nice"):  # draw in the time the run leaves idle, not in the run's
        os.nice(10)
    _svg(_figure())
    while True:
        try:
            message = pickle.load(sys.stdin.buffer)
        except EOFError:  # the run ended without a page
            break
        if message[0] == "plots":
            _plots(*message[1:])
        else:
            write_html(*message[1:])
            break
    sys.stdout.flush()
    os._exit(0)  # matplotlib's teardown is a tenth of a second
