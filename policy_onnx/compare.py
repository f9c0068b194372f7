"""`policy-onnx compare OLD NEW`: two JSON reports, release over release.

Policies are matched by name (their key in the run: the model's file name, or `ALGO/ENV_N` in a
Zoo tree; two reports of one policy each, of one algorithm and action space, are compared
whatever their names), clauses by ID. It tells which clauses changed outcome, how each clause's
margin (its worst |final - predict| / tolerance) moved, and which policies are in one report
only; the exit status is 1 on a regression (`Comparison.regressions`), 0 otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from . import spec
from .record import NOT_APPLICABLE, ReportError, read_document

# A worst ratio below this counts as this much when growth is computed: the report's first
# histogram bin (<=1e-6), where an exact agreement (0) and float32 noise alike land.
RATIO_FLOOR = 1e-6
RANK = {None: 0, **{level.label: int(level) for level in spec.Level}}


def _ratio(margin: dict | None) -> float | None:
    """A margin's worst ratio (inf where it was not finite); None without a margin."""
    if margin is None:
        return None
    return math.inf if not margin.get("worst_ratio_finite", True) \
        else float(margin["worst_ratio"] or 0.0)


def _ratio_text(ratio: float | None) -> str:
    if ratio is None:
        return "none"
    return "not finite" if math.isinf(ratio) else f"{ratio:.3g}"


def _kind(policy: dict) -> tuple:
    """What a policy is, beyond its name: its algorithm and action space."""
    return (policy.get("model") or {}).get("algorithm"), policy.get("action_space")


def _satisfied(clause: dict | None) -> bool:
    return clause is not None and (clause["outcome"] == "passed" or (
        clause["outcome"] == "skipped" and NOT_APPLICABLE in clause.get("detail", "")))


@dataclass
class Comparison:
    lines: list[str] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)


def compare(old_path: Path, new_path: Path, max_growth: float | None = None) -> Comparison:
    """Compare two reports (ReportError when either is not one)."""
    old, new = read_document(old_path), read_document(new_path)
    found = Comparison()
    say = found.lines.append
    say(f"old: {old_path} (policy-onnx {old.get('suite_version')}, profile "
        f"{old.get('hypothesis_profile')}, level {old.get('level_requested')} "
        f"{'met' if old.get('level_met') else 'NOT MET'})")
    say(f"new: {new_path} (policy-onnx {new.get('suite_version')}, profile "
        f"{new.get('hypothesis_profile')}, level {new.get('level_requested')} "
        f"{'met' if new.get('level_met') else 'NOT MET'})")
    for name in ("suite_version", "spec_version", "hypothesis_profile", "tolerance"):
        if old.get(name) != new.get(name):
            say(f"note: {name} differs ({old.get(name)} -> {new.get(name)}): the runs drew or "
                "judged differently, so margins may move for that reason alone")
    olds = {p["name"]: p for p in old["policies"]}
    news = {p["name"]: p for p in new["policies"]}
    if len(olds) == len(news) == 1 and olds.keys() != news.keys() \
            and _kind(*olds.values()) == _kind(*news.values()):
        # One policy in each, renamed (a model file named after its release): they are the pair.
        [(was, policy)], [now] = olds.items(), news
        say(f"the one policy of each report compared: {was} (old) with {now} (new)")
        olds = {now: policy}
    common = [n for n in news if n in olds]
    if not common:
        raise ReportError(f"{old_path} and {new_path} have no policy in common (old: "
                          f"{', '.join(olds) or 'none'}; new: {', '.join(news) or 'none'})")
    for name in common:
        _policy(name, olds[name], news[name], max_growth, found)
    for which, names in (("old", [n for n in olds if n not in news]),
                         ("new", [n for n in news if n not in olds])):
        if names:
            say(f"only in the {which} report: {', '.join(names)}")
    if found.regressions:
        say(f"REGRESSED ({len(found.regressions)}):")
        found.lines += [f"  {regression}" for regression in found.regressions]
    else:
        say("no regression" + (f" (no worst ratio grew more than x{max_growth:g})"
                               if max_growth is not None else ""))
    return found


def _policy(name: str, old: dict, new: dict, max_growth: float | None,
            found: Comparison) -> None:
    say = found.lines.append
    say(f"{name}:")
    was, now = old.get("level_reached"), new.get("level_reached")
    if RANK.get(now, 0) < RANK.get(was, 0):
        say(f"  level reached: {was} -> {now or 'none'}  REGRESSED")
        found.regressions.append(f"{name}: level {was} -> {now or 'none'}")
    else:
        say(f"  level reached: {was or 'none'} -> {now or 'none'}")
    if new.get("open_failure") and not old.get("open_failure"):
        say(f"  not checked in the new run: {new['open_failure']}")
    before = {c["id"]: c for c in old["clauses"]}
    after = {c["id"]: c for c in new["clauses"]}
    ids = [c.id for c in spec.CLAUSES if c.id in before or c.id in after]
    ids += sorted((set(before) | set(after)) - set(ids))  # clauses this suite does not know
    changed = False
    for cid in ids:
        b, a = before.get(cid), after.get(cid)
        was_out = b["outcome"] if b else "not run"
        now_out = a["outcome"] if a else "not run"
        if was_out != now_out:
            changed = True
            worse = _satisfied(b) and now_out in ("failed", "error")
            say(f"  {cid}: {was_out} -> {now_out}" + ("  REGRESSED" if worse else ""))
            if worse:
                found.regressions.append(f"{name} {cid} {was_out} -> {now_out}")
    if not changed:
        say("  no clause changed outcome")
    for cid in ids:
        b, a = before.get(cid), after.get(cid)
        was_r = _ratio(b.get("margin")) if b else None
        now_r = _ratio(a.get("margin")) if a else None
        if was_r is None and now_r is None:
            continue
        line = f"  {cid} worst ratio to tolerance: {_ratio_text(was_r)} -> {_ratio_text(now_r)}"
        if was_r is not None and now_r is not None:
            growth = now_r / max(was_r, RATIO_FLOOR) if not math.isinf(was_r) else (
                1.0 if math.isinf(now_r) else 0.0)
            line += f" (x{growth:.3g})" if math.isfinite(growth) else " (x inf)"
            if max_growth is not None and growth > max_growth:
                line += f"  GREW past x{max_growth:g}"
                found.regressions.append(f"{name} {cid} worst ratio {_ratio_text(was_r)} -> "
                                         f"{_ratio_text(now_r)}, more than x{max_growth:g}")
        say(line)
