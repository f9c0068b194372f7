"""A zoo across machines: `--shard K/N` runs the K-th of N parts of the policies the options
name, and `policy-onnx merge` makes one run's record of the N parts' JSON reports.

A shard is dealt whole policies, never a policy's clauses: the policies' names sorted, the
first to shard 1, the second to shard 2, ... and round again. The same set of files (the same
names) deals the same way on every machine. Each shard's report names the whole set in the
run's order with the SHA-256 of each one's files, so that the merge can tell a missing shard, a
shard of other files and a shard of another suite version or settings, each an error, from a
complete run; it orders the policies as one serial run of the whole set would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import spec
from .record import PolicyRecord, ReportError, RunRecord, read_document

SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
# What every shard of one run must share: its report's settings.
SHARED_SETTINGS = ("suite_version", "spec_version", "hypothesis_profile", "tolerance",
                   "level_requested")


@dataclass(frozen=True)
class Shard:
    index: int  # 1-based
    total: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` with 1 <= K <= N; ValueError saying what is wrong otherwise."""
        match = SHARD.match(text)
        if not match:
            raise ValueError(f"--shard {text}: give K/N, the K-th of N shards (e.g. 2/4)")
        index, total = int(match[1]), int(match[2])
        if not 1 <= index <= total:
            raise ValueError(f"--shard {text}: K must be between 1 and N (the shards are "
                             f"1/{total or 'N'} to {total or 'N'}/{total or 'N'})")
        return cls(index, total)

    def deals(self, names: list[str]) -> list[str]:
        """The names of `names` dealt to this shard, in their order in `names`."""
        dealt = set(sorted(names)[self.index - 1::self.total])
        return [name for name in names if name in dealt]

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    def describe(self, contents: dict[str, str]) -> dict:
        """The shard as its report holds it: which it is, the whole set's policies and the
        SHA-256 of each one's files (model, then artifact)."""
        return {"index": self.index, "total": self.total, "policies": list(contents),
                "sha256": dict(contents)}


def merge(paths: list[Path]) -> tuple[RunRecord, list[str]]:
    """One run's record of the shards' reports, and a line per shard read; ReportError when a
    file is not a shard's report, a shard is missing or given twice, or the shards differ in
    suite version, settings or the set of policies."""
    if not paths:
        raise ReportError("no report given: pass every shard's JSON report (e.g. "
                          "reports/*.json)")
    documents = [(path, read_document(path)) for path in paths]
    first_path, first = documents[0]
    for path, document in documents:
        shard = document.get("shard")
        if not isinstance(shard, dict):
            raise ReportError(f"{path}: not the report of a shard (it has no shard); merge "
                              "the reports of runs given --shard K/N")
        if not (isinstance(shard.get("index"), int) and isinstance(shard.get("total"), int)
                and 1 <= shard["index"] <= shard["total"]
                and isinstance(shard.get("policies"), list)):
            raise ReportError(f"{path}: its shard is not index, total and policies as --shard "
                              "writes them; pass the file the shard wrote, unedited")
        for name in SHARED_SETTINGS:
            if document.get(name) != first.get(name):
                raise ReportError(
                    f"{path}: {name} {document.get(name)!r}, but {first_path} has "
                    f"{first.get(name)!r}: every shard must be run by one policy-onnx with the "
                    "same options; run the odd shard again")
        if document["shard"].get("policies") != first["shard"].get("policies") \
                or document["shard"].get("total") != first["shard"].get("total"):
            raise ReportError(
                f"{path}: shard {_label(document)} of another set of policies than "
                f"{first_path} (shard {_label(first)}): every shard must be given the same "
                "models and the same N")
        theirs, ours = document["shard"].get("sha256") or {}, first["shard"].get("sha256") or {}
        other = next((name for name in first["shard"]["policies"]
                      if theirs.get(name) != ours.get(name)), None)
        if other is not None:
            raise ReportError(
                f"{path}: shard {_label(document)} was given other files for {other} than "
                f"{first_path} (shard {_label(first)}): sha256 {theirs.get(other)} against "
                f"{ours.get(other)}; check out the same models on every machine")
    names, total = first["shard"]["policies"], first["shard"]["total"]
    by_index: dict[int, Path] = {}
    for path, document in documents:
        index = document["shard"]["index"]
        if index in by_index:
            raise ReportError((f"{path} is given twice" if path == by_index[index] else
                               f"{path} and {by_index[index]} are both shard {index}/{total}")
                              + ": pass each shard's report once")
        by_index[index] = path
    missing = [k for k in range(1, total + 1) if k not in by_index]
    if missing:
        lost = [name for k in missing for name in Shard(k, total).deals(names)]
        raise ReportError(
            f"shard(s) {', '.join(f'{k}/{total}' for k in missing)} missing: no report of "
            f"{'it' if len(missing) == 1 else 'them'} among the {len(paths)} given, so "
            f"{len(lost)} of the {len(names)} policies {'has' if len(lost) == 1 else 'have'} "
            "no verdict"
            + (f" ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''})" if lost else "")
            + "; pass every shard's report, or run the missing shards")
    policies: dict[str, PolicyRecord] = {}
    lines = []
    for path, document in documents:
        shard = Shard(document["shard"]["index"], total)
        dealt = shard.deals(names)
        strays = [p["name"] for p in document["policies"] if p["name"] not in dealt]
        if strays:
            raise ReportError(f"{path}: shard {shard} reports {strays[0]}, which is not dealt "
                              "to it: pass the reports as the shards wrote them")
        for policy in document["policies"]:
            policies[policy["name"]] = PolicyRecord.from_dict(policy)
        lines.append(f"shard {shard}: {path} ({len(document['policies'])} of its "
                     f"{len(dealt)} policies judged)")
    settings = {name: first[name] for name in ("suite_version", "spec_version",
                                               "hypothesis_profile", "tolerance")}
    level = spec.Level[first["level_requested"].upper()]
    return RunRecord(settings, level, [policies[n] for n in names if n in policies]), lines


def _label(document: dict) -> str:
    return f"{document['shard'].get('index')}/{document['shard'].get('total')}"
