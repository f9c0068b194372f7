"""Per-clause verdicts of a run, the conformance level they reach, and the JSON report."""

from __future__ import annotations

import json
import os
import re
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

from . import spec
from .parity import STATISTICS

NOT_APPLICABLE = "not applicable"
WORKER_LINE = re.compile(r"^\[gw\d+\] .*\n")  # pytest-xdist's header on a worker's failure
REPORT_VERSION = 1  # of the JSON report's layout; raised when a field changes meaning or goes


@dataclass
class Verdict:
    id: str
    level: str
    title: str
    outcome: str  # passed, failed, error or skipped
    detail: str  # the skip reason or the failure, empty when passed

    @property
    def satisfied(self) -> bool:
        """Passed, or does not apply to this policy (a skip for a missing --model does not)."""
        return self.outcome == "passed" or (self.outcome == "skipped"
                                            and NOT_APPLICABLE in self.detail)


class Verdicts:
    def __init__(self):
        self.by_clause: dict[str, Verdict] = {}
        self.statistics: dict[str, dict[str, int]] = {}  # what the parity clauses exercised
        self.coverage: dict | None = None  # the decision coverage of the artifact's graph

    def record(self, report) -> None:
        """Take a pytest TestReport of a clause test (other reports are ignored); the plugin
        puts the clause ID and the parity statistics in its user_properties."""
        properties = dict(report.user_properties)
        if "clause" not in properties or (report.when != "call" and report.outcome == "passed"):
            return
        clause = spec.clause(properties["clause"])
        if "decision_coverage" in properties:
            self.coverage = properties["decision_coverage"]
        if "observations" in properties:
            self.statistics[clause.id] = {name: properties[name] for name in STATISTICS}
        outcome = report.outcome
        if report.outcome == "failed" and (report.when != "call" or "suite_error" in properties):
            outcome = "error"  # not the artifact's fault: set-up, or the suite's own limitation
        if report.outcome == "skipped":
            detail = report.longrepr[2] if isinstance(report.longrepr, tuple) else ""
            detail = detail.removeprefix("Skipped: ")
        else:
            detail = WORKER_LINE.sub("", report.longreprtext) if report.outcome == "failed" \
                else ""
        self.by_clause[clause.id] = Verdict(clause.id, clause.level.label, clause.title,
                                            outcome, detail)

    def level_reached(self, structure: str, kind: str) -> tuple[spec.Level | None, str]:
        """The highest level reached, and what stops the next one (empty at Extended).

        A policy checked for parity by Extended clauses (discrete, masked, recurrent, normalized,
        image or dict observations) needs those clauses from Standard on: Standard means "acts
        like predict()" for every policy.
        """
        # Clauses for what the model was trained on (normalized, image or dict observations)
        # that applied to it.
        extended_input = any((c.needs_normalization or c.observations)
                             and c.id in self.by_clause
                             and NOT_APPLICABLE not in self.by_clause[c.id].detail
                             for c in spec.CLAUSES)
        beyond_box = structure != "plain" or kind != "Box" or extended_input
        reached = None
        for level in spec.Level:
            required = [c for c in spec.CLAUSES if c.level <= level
                        or (beyond_box and level >= spec.Level.STANDARD)]
            blocking = [c.id for c in required if c.id in self.by_clause
                        and not self.by_clause[c.id].satisfied]
            missing = [c.id for c in required if c.id not in self.by_clause]
            if blocking or missing:
                why = ", ".join(f"{cid} {self.by_clause[cid].outcome}" for cid in blocking[:3])
                return reached, why or f"{', '.join(missing[:3])} not run"
            reached = level
        return reached, ""

    def level_met(self, structure: str, kind: str, requested: spec.Level) -> bool:
        reached, _ = self.level_reached(structure, kind)
        return reached is not None and reached >= requested

    def summary_lines(self, structure: str, kind: str, requested: spec.Level,
                      problems_only: bool = False) -> list[str]:
        """A row per clause, then the level line; `problems_only` leaves out the rows of
        satisfied clauses (passed, or not applicable) and counts them instead."""
        lines, satisfied = [], 0
        for c in spec.CLAUSES:
            verdict = self.by_clause.get(c.id)
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
        reached, why = self.level_reached(structure, kind)
        marks = []
        for level in spec.Level:
            ok = reached is not None and level <= reached
            marks.append(f"{level.label} {'PASS' if ok else 'FAIL'}"
                         + ("" if ok or (reached or 0) + 1 != level else f" ({why})"))
        lines.append("level: " + ", ".join(marks)
                     + f"; requested {requested.label}: "
                     + ("met" if reached is not None and reached >= requested else "NOT MET"))
        return lines

    def statistics_lines(self, kind: str) -> list[str]:
        """What each parity clause exercised."""
        lines = []
        for clause_id, counts in self.statistics.items():
            if spec.clause(clause_id).kinds == spec.BOX:
                detail = (f", {counts['mean_outside_bounds']:,} with the mean outside the "
                          "action bounds")
                if counts.get("rounding_ties"):
                    detail += (f", {counts['rounding_ties']:,} differing only at a rounding "
                               "tie")
            elif kind != "Box":
                detail = f", {counts['rounding_ties']:,} disagreeing only at a rounding tie"
                if counts.get("choices_possible"):
                    detail += (f"; predict() made {counts['choices_drawn']} of its "
                               f"{counts['choices_possible']} possible choices")
                    unmade = counts["choices_possible"] - counts["choices_drawn"]
                    if unmade:
                        detail += (f" ({unmade} UNCHECKED: no draw made predict() choose "
                                   f"{'it' if unmade == 1 else 'them'})")
                if counts.get("search_stopped"):
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
            if counts.get("predict_overflows"):
                detail += (f" ({counts['predict_overflows']:,} more drawn where predict() "
                           "itself overflows, not compared)")
            lines.append(f"{clause_id}: {counts['observations']:,} observations checked "
                         f"against predict(){detail}")
        return lines

    def as_dict(self, structure: str, kind: str, requested: spec.Level) -> dict:
        """The verdicts of one policy, as the JSON report holds them."""
        reached, why = self.level_reached(structure, kind)
        return {
            "level_reached": reached.label if reached else None,
            "level_met": self.level_met(structure, kind, requested),
            "next_level_blocked_by": why,
            "clauses": [asdict(self.by_clause[c.id]) for c in spec.CLAUSES
                        if c.id in self.by_clause],
            "statistics": dict(sorted(self.statistics.items())),
            "decision_coverage": self.coverage,
        }

    def coverage_lines(self) -> list[str]:
        """The decision coverage of the artifact's graph, in a line (and the decisions not
        seen every way)."""
        c = self.coverage
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
        return lines


def coverage_properties(summary: dict) -> list[tuple[str, object]]:
    """The decision coverage as report properties: the summary whole (for the run's record) and
    flat values (for JUnit XML)."""
    return [("decision_coverage", summary),
            *((f"coverage_{name}", value) for name, value in summary.items()
              if isinstance(value, (int, bool))),
            ("coverage_not_every_way", "; ".join(summary["not_every_way"])),
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


# A run's policies: objects with .key, .structure, .action_kind, .verdicts, .open_failure and
# .describe() (the plugin's Policy). One that could not be opened meets no level.
def _met(policy, requested: spec.Level) -> bool:
    return not policy.open_failure and policy.verdicts.level_met(policy.structure,
                                                                 policy.action_kind, requested)


def _verdicts_document(policy, requested: spec.Level) -> dict:
    if policy.open_failure:
        return {"level_reached": None, "level_met": False,
                "next_level_blocked_by": "the model or artifact cannot be opened",
                "clauses": [], "statistics": {}}
    return policy.verdicts.as_dict(policy.structure, policy.action_kind, requested)


def all_met(policies, requested: spec.Level) -> bool:
    return all(_met(policy, requested) for policy in policies)


def policies_line(policies, requested: spec.Level) -> str:
    """The verdict of a run of several policies, in one line."""
    failing = [p.key for p in policies if not _met(p, requested)]
    return (f"{len(policies) - len(failing)} of {len(policies)} policies meet the requested "
            f"level {requested.label}" + (f"; NOT MET: {', '.join(failing)}" if failing else ""))


def report_document(settings_used: dict, policies, requested: spec.Level) -> dict:
    """The JSON report: the run's settings, then each policy with its verdicts."""
    return {
        "report_version": REPORT_VERSION, **settings_used,
        "level_requested": requested.label,
        "level_met": all_met(policies, requested),
        "policies": [{**policy.describe(), **_verdicts_document(policy, requested)}
                     for policy in policies],
    }


def write_json(path: Path, document: dict) -> None:
    """Write the report whole or not at all (a CI job may read it while another run writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(partial, path)
