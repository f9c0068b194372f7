"""The record of a run (record.py) as text: the terminal summary, JUnit XML properties and the
JSON file."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from . import spec
from .record import PolicyRecord, RunRecord


def summary_lines(record: PolicyRecord, requested: spec.Level,
                  problems_only: bool = False) -> list[str]:
    """A row per clause, then the level line; `problems_only` leaves out the rows of
    satisfied clauses (passed, or not applicable) and counts them instead."""
    lines, satisfied = [], 0
    for c in spec.CLAUSES:
        verdict = record.by_clause.get(c.id)
        if verdict is None:
            continue
        if problems_only and verdict.satisfied:
            satisfied += 1
            continue
        detail = "" if verdict.outcome == "passed" else textwrap.shorten(
            (verdict.detail.splitlines() or [""])[0], 100, placeholder=" ...")
        lines.append(f"{c.id:9} {c.level.label:9} {verdict.outcome:8} {c.title}"
                     + (f"  ({detail})" if detail else ""))
    if satisfied:
        lines.append(f"{satisfied} {'other ' if lines else ''}clauses passed or are not "
                     "applicable (-v lists them)")
    reached, why = record.level_reached()
    marks = []
    for level in spec.Level:
        ok = reached is not None and level <= reached
        marks.append(f"{level.label} {'PASS' if ok else 'FAIL'}"
                     + ("" if ok or (reached or 0) + 1 != level else f" ({why})"))
    lines.append("level: " + ", ".join(marks)
                 + f"; requested {requested.label}: "
                 + ("met" if reached is not None and reached >= requested else "NOT MET"))
    return lines


def statistics_lines(record: PolicyRecord) -> list[str]:
    """What each parity clause exercised."""
    lines = []
    for clause_id, counts in record.statistics.items():
        if spec.clause(clause_id).kinds == spec.BOX:
            detail = (f", {counts['mean_outside_bounds']:,} with the mean outside the "
                      "action bounds")
            if counts.get("rounding_ties"):
                detail += (f", {counts['rounding_ties']:,} differing only at a rounding "
                           "tie")
        elif record.action_kind != "Box":
            detail = f", {counts['rounding_ties']:,} disagreeing only at a rounding tie"
            if counts.get("choices_possible"):
                detail += (f"; predict() made {counts['choices_drawn']} of its "
                           f"{counts['choices_possible']} possible choices")
                unmade = counts["choices_possible"] - counts["choices_drawn"]
                if unmade:
                    detail += (f" ({unmade} UNCHECKED: no draw made predict() choose "
                               f"{'it' if unmade == 1 else 'them'})")
            if counts.get("search_stopped") and not spec.clause(clause_id).portability:
                detail += (f"; the search for each choice STOPPED at its time budget of "
                           f"{counts['search_stopped']} s, having found "
                           f"{counts['choices_searched']} of them (the others may never "
                           "have been drawn)")
            elif counts.get("choices_searched"):
                detail += (f" (the search for each choice found "
                           f"{counts['choices_searched']})")
        else:
            detail = ""
        if spec.clause(clause_id).needs_normalization:
            detail += (f", {counts['observation_at_clip']:,} with the normalized "
                       "observation at +-clip_obs")
        if counts.get("rollout_reach"):
            detail += (f"; every step's state compared with predict()'s and fed back, up "
                       f"to {counts['rollout_reach']:,} steps after a reset")
        if spec.clause(clause_id).portability and counts.get("search_stopped"):
            detail += (f"; STOPPED at its time budget of {counts['search_stopped']} s: the "
                       "rest of what the parity clauses compared was not run again")
        if counts.get("predict_overflows"):
            detail += (f" ({counts['predict_overflows']:,} more drawn where predict() "
                       "itself overflows, not compared)")
        lines.append(f"{clause_id}: {counts['observations']:,} observations checked "
                     f"against predict(){detail}")
    return lines


def ratio_text(margin: dict) -> str:
    """The worst ratio of a margin, as a number of tolerances."""
    if not margin["worst_ratio_finite"]:
        return "not finite (NaN or inf)"
    return f"{margin['worst_ratio']:.2g}x tolerance"


def margin_lines(record: PolicyRecord) -> list[str]:
    """How close each parity clause came to failing: its worst |final - predict| / tolerance,
    and for discrete actions the closest score gap of predict()'s choices."""
    lines = []
    for clause_id, margin in sorted(record.margins.items()):
        line = (f"{clause_id} worst {ratio_text(margin)}"
                + (f" (action {margin['action_element']})"
                   if margin["worst_ratio"] is None or margin["worst_ratio"] > 0 else "")
                + f" over {margin['observations']:,} observations")
        if margin.get("closest_score_gap") is not None:
            line += (f"; predict()'s closest score gap {margin['closest_score_gap']:.3g} "
                     f"({margin['closest_score_gap_tolerances']:,.3g} tie tolerances, action "
                     f"{margin['closest_score_gap_element']})")
        lines.append(line)
    return lines


def coverage_lines(record: PolicyRecord) -> list[str]:
    """The decision coverage of the artifact's graph, in a line (and the decisions not
    seen every way)."""
    c = record.coverage
    if c is None:
        return []
    if c.get("not_run"):
        return [f"decisions in the graph: not searched, the graph could not be run with its "
                f"decisions exposed ({c['not_run']})"]
    line = (f"decisions in the graph: {c['decisions']}, seen every way: "
            f"{c['decisions_every_way']}; piecewise-linear units: {c['units']}, every way: "
            f"{c['units_every_way']}")
    if c["guards"]:
        line += f"; NaN/inf guards (not searched): {c['guards']}"
    if c["batch_sizes_found"]:
        line += (f"; batch sizes that decide: "
                 f"{', '.join(map(str, c['batch_sizes_found']))}")
    if c["rows_found"]:
        line += f"; {c['rows_found']:,} observations found by the search, checked"
    if c["search_budget_spent"]:
        line += "; the search stopped at its time budget"
    lines = [line]
    if c["not_every_way"]:
        lines.append("  not seen every way (the suite could not drive them; a fault behind "
                     "them would go unseen): " + ", ".join(c["not_every_way"][:10])
                     + (f", ... {len(c['not_every_way']) - 10} more"
                        if len(c["not_every_way"]) > 10 else ""))
    if c.get("not_modelled"):
        lines.append("  operations on observation values the search does not model (a decision "
                     "inside them would go unseen): " + ", ".join(c["not_modelled"][:10])
                     + (f", ... {len(c['not_modelled']) - 10} more"
                        if len(c["not_modelled"]) > 10 else ""))
    return lines


def coverage_properties(summary: dict) -> list[tuple[str, object]]:
    """The decision coverage as report properties: the summary whole (for the run's record) and
    flat values (for JUnit XML)."""
    return [("decision_coverage", summary),
            *((f"coverage_{name}", value) for name, value in summary.items()
              if isinstance(value, (int, bool))),
            ("coverage_not_every_way", "; ".join(summary["not_every_way"])),
            ("coverage_not_modelled", "; ".join(summary["not_modelled"])),
            *((("coverage_not_run", summary["not_run"]),) if summary["not_run"] else ())]


def normalization_line(described: dict | None, option: str | None = None) -> str:
    """The statistics a policy is checked with, in one line (`described`: as
    Normalization.describe() gives them; `option`: its --vecnormalize value)."""
    if described is None:
        return "observation normalization: none (--vecnormalize none)" if option == "none" else ""
    if described["norm_obs"]:
        clip = described["clip_obs"]
        how = (f"clip_obs {clip:g}" if clip is not None else "clip_obs inf (no clip)") + \
            f", epsilon {described['epsilon']:g}"
        if described.get("keys") is not None:
            how += f", keys {', '.join(described['keys']) or '(none)'}"
    else:
        how = "norm_obs false: observations pass unchanged"
    return (f"observation normalization: {described['path']} (sha256 {described['sha256']}, "
            f"{how}); the artifact takes raw observations")


def policies_line(run: RunRecord) -> str:
    """The verdict of a run of several policies, in one line."""
    failing = [p.key for p in run.policies if not p.level_met(run.requested_level)]
    return (f"{len(run.policies) - len(failing)} of {len(run.policies)} policies meet the "
            f"requested level {run.requested_level.label}"
            + (f"; NOT MET: {', '.join(failing)}" if failing else ""))


def terminal_summary(run: RunRecord, write, section, problems_only: bool,
                     report_path: Path | None, html_path: str | None = None) -> None:
    """The run in the terminal: `write(line)`; `section(title)` starts a policy's part when
    there are several; `problems_only` lists only the clauses that stop a policy."""
    several = len(run.policies) > 1
    shard = run.settings.get("shard")
    if shard:
        write(f"shard {shard['index']}/{shard['total']}: {len(run.policies)} of the "
              f"{len(shard['policies'])} policies named judged here (policy-onnx merge joins "
              "the shards' reports)")
    for policy in run.policies:
        if several:
            section(policy.key)
        if policy.open_failure:
            write(f"NOT CHECKED: {policy.open_failure}")
            write(f"level: none; requested {run.requested_level.label}: NOT MET")
            continue
        for line in summary_lines(policy, run.requested_level, problems_only):
            write(line)
        if policy.exported_path:
            write(f"exported artifact: {policy.exported_path} "
                  f"(sha256 {policy.description['artifact']['sha256']})")
        line = normalization_line(policy.description.get("normalization"),
                                  policy.vecnormalize_option)
        if line:
            write(line)
        for line in (*statistics_lines(policy), *margin_lines(policy),
                     *coverage_lines(policy), *runtime_lines(policy)):
            write(line)
    if several:
        section("all policies")
        write(policies_line(run))
    if report_path:
        write(f"report: {report_path}")
    if html_path:
        write(f"page: {html_path}")


def runtime_lines(record: PolicyRecord) -> list[str]:
    """PORT-04's verdict per runtime named with --runtime."""
    return [f"runtime {engine}: {verdict.splitlines()[0][:300]}"
            for engine, verdict in record.runtimes.items()]


def runtime_properties(runtimes: dict[str, str]) -> list[tuple[str, str]]:
    """PORT-04's verdicts as JUnit properties: `runtime <engine>`, the verdict's first line."""
    return [(f"runtime {engine}", verdict.splitlines()[0]) for engine, verdict in runtimes.items()]


def json_text(document: dict) -> str:
    """The JSON report as written."""
    return json.dumps(document, indent=2) + "\n"


def write_json(path: Path, document: dict) -> None:
    write_whole(path, json_text(document))


def write_whole(path: Path, text: str) -> None:
    """Write a file whole or not at all (a CI job may read it while another run writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def junit_xml(run: RunRecord) -> str:
    """The run as JUnit XML (xunit1, the family whose schema has testcase properties): a test
    case per clause of each policy, named by the policy and the clause, with the properties
    the clause tests carry in a pytest run; a policy that could not be opened is one failing
    case. For `policy-onnx merge`, where no pytest run wrote one."""
    from xml.etree import ElementTree as ET

    suite = ET.Element("testsuite", name="policy-onnx")
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for policy in run.policies:
        if policy.open_failure:
            case = ET.SubElement(suite, "testcase", classname=policy.key, name="opens")
            ET.SubElement(case, "failure", message=policy.open_failure[:300]).text = \
                policy.open_failure
            counts["tests"] += 1
            counts["failures"] += 1
            continue
        first = True
        for verdict in (policy.by_clause[c.id] for c in spec.CLAUSES if c.id in policy.by_clause):
            case = ET.SubElement(suite, "testcase", classname=policy.key,
                                 name=f"{verdict.id} {verdict.title}")
            found = [("clause", verdict.id), ("level", verdict.level), ("policy", policy.key),
                     *policy.statistics.get(verdict.id, {}).items()]
            if verdict.id == "PORT-04":
                found += runtime_properties(policy.runtimes)
            if first and policy.coverage is not None:
                found += [(k, v) for k, v in coverage_properties(policy.coverage)
                          if not isinstance(v, dict)]
                first = False
            properties = ET.SubElement(case, "properties")
            for name, value in found:
                ET.SubElement(properties, "property", name=name, value=str(value))
            counts["tests"] += 1
            message = (verdict.detail.splitlines() or [""])[0][:300]
            if verdict.outcome in ("failed", "error"):
                tag = "failure" if verdict.outcome == "failed" else "error"
                ET.SubElement(case, tag, message=message).text = verdict.detail
                counts["failures" if tag == "failure" else "errors"] += 1
            elif verdict.outcome == "skipped":
                ET.SubElement(case, "skipped", type="pytest.skip", message=message).text = \
                    verdict.detail
                counts["skipped"] += 1
    for name, value in counts.items():
        suite.set(name, str(value))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
