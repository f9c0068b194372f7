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

    def describe(self, contents: dict[str, str], options: dict) -> dict:
        """The shard as its report holds it: which it is, the whole set's policies, the SHA-256
        of each one's files (model+artifact+statistics) and the options that change verdicts."""
        return {"index": self.index, "total": self.total, "policies": list(contents),
                "sha256": dict(contents), "options": options}


def merge(paths: list[Path]) -> tuple[RunRecord, list[str]]:
    """One run's record of the shards' reports, and a line per shard read; ReportError when a
    file is not a shard's report, a shard is missing, given twice or did not judge every policy
    dealt to it, or the shards differ in suite version, options, files or the set of policies."""
    if not paths:
        raise ReportError("no report given: pass every shard's JSON report (e.g. "
                          "reports/*.json)")
    documents = [(path, read_document(path)) for path in paths]
    for path, document in documents:
        _check_shard(path, document)
    first_path, first = documents[0]
    for path, document in documents[1:]:
        _check_same_run(path, document, first_path, first)
    names, total = first["shard"]["policies"], first["shard"]["total"]
    if not names:
        raise ReportError(f"{first_path}: the shards name no policy; pass the reports of shards "
                          "given models")
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
            f"{_policies(lost, len(names))} no verdict; pass every shard's report, or run the "
            "missing shards")
    policies: dict[str, PolicyRecord] = {}
    lines = []
    for path, document in documents:
        shard = Shard(document["shard"]["index"], total)
        dealt = shard.deals(names)
        judged = [policy["name"] for policy in document["policies"]]
        if sorted(judged) != sorted(dealt):
            strays = [name for name in judged if name not in dealt or judged.count(name) > 1]
            unjudged = [name for name in dealt if name not in judged]
            raise ReportError(
                f"{path}: shard {shard} reports {strays[0]}, which is not dealt to it once; "
                "pass the reports as the shards wrote them" if strays else
                f"{path}: shard {shard} judged {len(dealt) - len(unjudged)} of the "
                f"{len(dealt)} policies dealt to it ({', '.join(unjudged[:3])} not): run it "
                "again without deselecting them (-k, -m) and until it ends")
        for policy in document["policies"]:
            try:
                policies[policy["name"]] = PolicyRecord.from_dict(policy)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise ReportError(f"{path}: policy {policy['name']} is not as --report writes "
                                  f"it ({type(exc).__name__}: {exc}); pass the file the shard "
                                  "wrote, unedited") from None
        lines.append(f"shard {shard}: {path} ({len(dealt)} policies)")
    settings = {name: first[name] for name in ("suite_version", "spec_version",
                                               "hypothesis_profile", "tolerance")}
    level = LEVELS[first["level_requested"]]
    return RunRecord(settings, level, [policies[name] for name in names]), lines


LEVELS = {level.label: level for level in spec.Level}


def _check_shard(path: Path, document: dict) -> None:
    """A shard's report as --shard writes it, or ReportError saying what is not."""
    shard = document.get("shard")
    if not isinstance(shard, dict):
        raise ReportError(f"{path}: not the report of a shard (it has no shard); merge the "
                          "reports of runs given --shard K/N")
    names = shard.get("policies")
    if not (type(shard.get("index")) is int and type(shard.get("total")) is int
            and 1 <= shard["index"] <= shard["total"] and isinstance(names, list)
            and all(isinstance(name, str) for name in names) and len(set(names)) == len(names)
            and isinstance(shard.get("sha256"), dict) and isinstance(shard.get("options"), dict)):
        raise ReportError(f"{path}: its shard is not index, total, policies, sha256 and options "
                          "as --shard writes them; pass the file the shard wrote, unedited")
    if document.get("level_requested") not in LEVELS or not all(
            isinstance(document.get(name), str) for name in SHARED_SETTINGS):
        raise ReportError(f"{path}: its settings ({', '.join(SHARED_SETTINGS)}) are not as "
                          "--report writes them; pass the file the shard wrote, unedited")
    if not all(isinstance(policy.get("name"), str) for policy in document["policies"]):
        raise ReportError(f"{path}: a policy without a name; pass the file the shard wrote, "
                          "unedited")


def _check_same_run(path: Path, document: dict, first_path: Path, first: dict) -> None:
    """ReportError unless the shard of `document` is of the same run as that of `first`: the
    same suite and settings, N, policies, files and options."""
    for name in SHARED_SETTINGS:
        if document[name] != first[name]:
            raise ReportError(
                f"{path}: {name} {document[name]!r}, but {first_path} has {first[name]!r}: "
                "every shard must be run by one policy-onnx with the same options; run the odd "
                "shard again")
    ours, theirs = first["shard"], document["shard"]
    if sorted(theirs["policies"]) != sorted(ours["policies"]) or theirs["total"] != ours["total"]:
        raise ReportError(
            f"{path}: shard {_label(document)} of another set of policies than {first_path} "
            f"(shard {_label(first)}): every shard must be given the same models and the same N")
    other = next((name for name in ours["policies"]
                  if theirs["sha256"].get(name) != ours["sha256"].get(name)), None)
    if other is not None:
        raise ReportError(
            f"{path}: shard {_label(document)} was given other files for {other} than "
            f"{first_path} (shard {_label(first)}): sha256 (model+artifact+statistics) "
            f"{theirs['sha256'].get(other)} against {ours['sha256'].get(other)}; check out the "
            "same models and statistics on every machine")
    option = next((name for name in sorted({*ours["options"], *theirs["options"]})
                   if theirs["options"].get(name) != ours["options"].get(name)), None)
    if option is not None:
        raise ReportError(
            f"{path}: shard {_label(document)} ran with {option} "
            f"{theirs['options'].get(option)!r}, but {first_path} with "
            f"{ours['options'].get(option)!r}: every shard must be run with the same options")


def _policies(names: list[str], of: int) -> str:
    listed = f" ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})" if names else ""
    return f"{len(names)} of the {of} policies{listed} {'has' if len(names) == 1 else 'have'}"


def _label(document: dict) -> str:
    return f"{document['shard']['index']}/{document['shard']['total']}"
