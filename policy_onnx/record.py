"""The record of a run: what it checked and what it found, in one place.

Per policy: the model and the artifact it checked (`description`, as the JSON report names them),
the verdict of every clause run, what each parity clause exercised (`statistics`), how close it
came to failing (`margins`) and the decision coverage of the artifact's graph; and the level each
policy reaches. The plugin's hooks fill it from the test reports (in the process that runs the
tests, or in the pytest-xdist controller, which sees nothing else); every rendering reads it: the
terminal summary and JUnit properties (report.py), the JSON report (`RunRecord.document`), the HTML
page (html.py) and `policy-onnx compare`, which reads the JSON back (`RunRecord` documents only).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import spec

NOT_APPLICABLE = "not applicable"
WORKER_LINE = re.compile(r"^\[gw\d+\] .*\n")  # pytest-xdist's header on a worker's failure
REPORT_VERSION = 1  # of the JSON report's layout; raised when a field changes meaning or goes


# Per parity clause: observations checked, those whose pre-clip mean left the action bounds,
# discrete disagreements only at a rounding tie, those whose normalized observation reached
# +-clip_obs (models trained under VecNormalize), those drawn but not compared because
# predict() itself overflows there, (recurrent rollouts) the most steps since a reset, and
# (discrete actions) how many of its possible choices predict() made in the draws, and, for a
# clause drawing near the each-action search's rows, how many choices that search found and
# the time budget (seconds) it stopped at (0: its ascent ran to the end); for a PORT clause,
# the time budget it stopped at before running all the parity clauses compared.
STATISTICS = ("observations", "mean_outside_bounds", "rounding_ties", "observation_at_clip",
              "predict_overflows", "rollout_reach", "choices_drawn", "choices_possible",
              "choices_searched", "search_stopped")


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


@dataclass(eq=False)
class PolicyRecord:
    """What the run found for one policy."""
    key: str
    by_clause: dict[str, Verdict] = field(default_factory=dict)
    statistics: dict[str, dict[str, int]] = field(default_factory=dict)  # per parity clause
    margins: dict[str, dict] = field(default_factory=dict)  # per parity clause: parity.Margin
    coverage: dict | None = None  # the decision coverage of the artifact's graph
    runtimes: dict[str, str] = field(default_factory=dict)  # PORT-04: engine -> its verdict
    # Set when the run is summed up (the plugin's Policy.describe()): the model and artifact.
    description: dict = field(default_factory=dict)
    structure: str = "plain"
    action_kind: str = "Box"
    open_failure: str | None = None
    exported_path: str | None = None  # the suite's own export, if it made one
    vecnormalize_option: str | None = None  # --vecnormalize as given (None: found by layout)
    replays: dict[str, str] = field(default_factory=dict)  # clause -> the command replaying it

    def take(self, report) -> None:
        """Take a pytest TestReport of a clause test (other reports are ignored); the plugin
        puts the clause ID, the parity statistics and margins in its user_properties."""
        properties = dict(report.user_properties)
        if "clause" not in properties or (report.when != "call" and report.outcome == "passed"):
            return
        clause = spec.clause(properties["clause"])
        if "decision_coverage" in properties:
            self.coverage = properties["decision_coverage"]
        if "runtimes" in properties:
            self.runtimes = properties["runtimes"]
        if "observations" in properties:
            self.statistics[clause.id] = {name: properties[name] for name in STATISTICS}
        if "margin" in properties:
            self.margins[clause.id] = properties["margin"]
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

    def level_reached(self) -> tuple[spec.Level | None, str]:
        """The highest level reached, and what stops the next one (empty at Extended).

        A policy checked for parity by Extended clauses (discrete, masked, recurrent, normalized,
        image or dict observations) needs those clauses from Standard on: Standard means "acts
        like predict()" for every policy. One that could not be opened reaches none.
        """
        if self.open_failure:
            return None, "the model or artifact cannot be opened"
        # Clauses for what the model was trained on (normalized, image or dict observations)
        # that applied to it.
        extended_input = any((c.needs_normalization or c.observations)
                             and c.id in self.by_clause
                             and NOT_APPLICABLE not in self.by_clause[c.id].detail
                             for c in spec.CLAUSES)
        beyond_box = self.structure != "plain" or self.action_kind != "Box" or extended_input
        reached = None
        for level in spec.Level:
            required = [c for c in spec.CLAUSES if c.level <= level
                        or (beyond_box and level >= spec.Level.STANDARD
                            and not c.portability)]
            blocking = [c.id for c in required if c.id in self.by_clause
                        and not self.by_clause[c.id].satisfied]
            missing = [c.id for c in required if c.id not in self.by_clause]
            if blocking or missing:
                why = ", ".join(f"{cid} {self.by_clause[cid].outcome}" for cid in blocking[:3])
                return reached, why or f"{', '.join(missing[:3])} not run"
            reached = level
        return reached, ""

    def level_met(self, requested: spec.Level) -> bool:
        reached, _ = self.level_reached()
        return reached is not None and reached >= requested

    def as_dict(self, requested: spec.Level) -> dict:
        """The policy as the JSON report holds it: what was checked, then the verdicts."""
        if self.open_failure:
            return {**self.description, "level_reached": None, "level_met": False,
                    "next_level_blocked_by": self.level_reached()[1], "clauses": [],
                    "statistics": {}}
        reached, why = self.level_reached()
        verdicts = {
            "level_reached": reached.label if reached else None,
            "level_met": self.level_met(requested),
            "next_level_blocked_by": why,
            "clauses": [{**asdict(self.by_clause[c.id]), **self.margin_fields(c.id)}
                        for c in spec.CLAUSES if c.id in self.by_clause],
            "statistics": dict(sorted(self.statistics.items())),
            "decision_coverage": self.coverage,
            "runtimes": self.runtimes,
        }
        return {**self.description, **verdicts}

    @classmethod
    def from_dict(cls, found: dict) -> PolicyRecord:
        """A policy of a JSON report read back (`as_dict`'s inverse, for `policy-onnx merge`;
        what the report does not hold, such as the --vecnormalize option, stays unset)."""
        verdicts = ("level_reached", "level_met", "next_level_blocked_by", "clauses",
                    "statistics", "decision_coverage", "runtimes")
        record = cls(found["name"], description={k: v for k, v in found.items()
                                                 if k not in verdicts})
        for clause in found["clauses"]:
            record.by_clause[clause["id"]] = Verdict(**{f.name: clause[f.name]
                                                        for f in fields(Verdict)})
            if clause.get("margin") is not None:
                record.margins[clause["id"]] = {**clause["margin"],
                                                "ratio_histogram": clause["ratio_histogram"]}
        record.statistics = dict(found.get("statistics") or {})
        record.coverage = found.get("decision_coverage")
        record.runtimes = dict(found.get("runtimes") or {})
        record.open_failure = found.get("open_failure")
        record.structure = found.get("structure") or record.structure
        record.action_kind = found.get("action_space") or record.action_kind
        artifact = found.get("artifact") or {}
        if artifact.get("exported_by_suite"):
            record.exported_path = artifact["path"]
        return record

    def margin_fields(self, clause_id: str) -> dict:
        """`margin` and `ratio_histogram` of a clause (null where it compared nothing)."""
        found = self.margins.get(clause_id)
        if found is None:
            return {"margin": None, "ratio_histogram": None}
        margin = {k: v for k, v in found.items() if k != "ratio_histogram"}
        return {"margin": margin, "ratio_histogram": found["ratio_histogram"]}


@dataclass(eq=False)
class RunRecord:
    """A run: its settings, the level requested and what it found for each policy judged (those
    checked, and those that could not be opened)."""
    settings: dict  # suite and spec versions, hypothesis profile, tolerance rule
    requested_level: spec.Level
    policies: list[PolicyRecord]

    @property
    def level_met(self) -> bool:
        return all(p.level_met(self.requested_level) for p in self.policies)

    def document(self) -> dict:
        """The JSON report: the run's settings, then each policy with its verdicts."""
        return {
            "report_version": REPORT_VERSION, **self.settings,
            "level_requested": self.requested_level.label,
            "level_met": self.level_met,
            "policies": [p.as_dict(self.requested_level) for p in self.policies],
        }


class ReportError(ValueError):
    """A file that is not a JSON report this suite can read back."""


def read_document(path: Path) -> dict:
    """A JSON report (`RunRecord.document`, as --report writes it) read back, checked to be one
    of this layout (`report_version`); ReportError says in a line why not."""
    try:
        document = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ReportError(f"{path}: not readable as JSON ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None
    if not isinstance(document, dict) or not isinstance(document.get("policies"), list) \
            or "report_version" not in document:
        raise ReportError(f"{path}: not a policy-onnx JSON report (no report_version and "
                          "policies); pass the file --report wrote")
    if type(document["report_version"]) is not int or document["report_version"] != REPORT_VERSION:
        raise ReportError(
            f"{path}: a report of layout {document['report_version']!r} (policy-onnx "
            f"{document.get('suite_version', '?')}); this policy-onnx reads layout "
            f"{REPORT_VERSION}: compare with the policy-onnx that wrote it, or write both "
            "again with one version")
    if not all(isinstance(p, dict) and isinstance(p.get("name"), str)
               and isinstance(p.get("clauses"), list) for p in document["policies"]):
        raise ReportError(f"{path}: a policy of the report has no name or clauses; pass the "
                          "file --report wrote, unedited")
    return document
