"""A zoo across machines: `--shard K/N` deals whole policies to N runs, and `policy-onnx merge`
makes one verdict of their JSON reports, equal to one serial run's; a shard missing, given twice,
of other files or of another suite version is an error."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from xml.etree import ElementTree as ET

import pytest

from policy_onnx.__main__ import main
from policy_onnx.shards import Shard

from .conftest import CONFORMANCE, REAL_MODEL, REAL_ONNX, ROOT, sha256
from .test_many_models import FAILS_UNCLAMPED, _verdicts

NAMES = [f"ppo/Env{i}-v1_1" for i in range(23)] + ["a2c/Ant-v3_1", "dqn/Pong_1"]


def test_shards_deal_every_policy_once_whatever_the_order():
    for total in (1, 2, 3, 7, 30):
        dealt = [Shard(k, total).deals(NAMES) for k in range(1, total + 1)]
        assert sorted(name for names in dealt for name in names) == sorted(NAMES)
        assert max(map(len, dealt)) - min(map(len, dealt)) <= 1  # whole policies, even shares
        shuffled = random.Random(total).sample(NAMES, len(NAMES))
        assert [set(Shard(k, total).deals(shuffled)) for k in range(1, total + 1)] == \
            [set(names) for names in dealt]  # the same files deal the same way
        assert all(names == [n for n in NAMES if n in names] for names in dealt)  # run order
    assert Shard.parse(" 2 / 4 ") == Shard(2, 4)
    for bad, says in (("x", "give K/N"), ("0/3", "between 1 and N"), ("4/3", "1/3 to 3/3"),
                      ("1/0", "between 1 and N"), ("-1/2", "give K/N")):
        with pytest.raises(ValueError, match=says):
            Shard.parse(bad)


def test_a_bad_shard_is_a_usage_error(conformance):
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "--shard", "3/2")
    assert run.ret == pytest.ExitCode.USAGE_ERROR
    assert "--shard 3/2: K must be between 1 and N (the shards are 1/2 to 2/2)" in run.stderr


def _mixed_zoo(unclamped, zoo):
    """The real model three times: with its artifact, unclamped, and a copy whose zip is cut
    short (it cannot be opened), with its artifact."""
    zoo.mkdir()
    broken = zoo / "broken.zip"
    broken.write_bytes(REAL_MODEL.read_bytes()[:2000])
    return ["--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX),
            "--model", str(REAL_MODEL), "--onnx", str(unclamped),
            "--model", str(broken), "--onnx", str(REAL_ONNX)]


@pytest.fixture
def shard_reports(conformance, unclamped_real, tmp_path):
    """Three shards of a zoo of three policies (one each), of two clauses, and their merge."""
    zoo = _mixed_zoo(unclamped_real, tmp_path / "zoo")
    reports = []
    for k in (1, 2, 3):
        reports.append(tmp_path / "reports" / f"shard-{k}.json")
        run = conformance.run(*zoo, "--shard", f"{k}/3", "--report", str(reports[-1]),
                              "-k", "GRAPH-01 or PAR-01")
        assert run.ret == 1, run.stdout  # two clauses reach no level
        assert f"shard {k}/3: 1 of the 3 policies named judged here" in run.stdout
        document = json.loads(reports[-1].read_text())
        assert len(document["policies"]) == 1
        assert document["shard"]["sha256"][f"{REAL_MODEL.stem}-1"] == \
            f"{sha256(REAL_MODEL)}+{sha256(REAL_ONNX)}+-"  # the files each machine was given
        assert document["shard"]["options"]["keyword"] == "GRAPH-01 or PAR-01"
    return reports


def test_merge_makes_one_report_junit_file_and_verdict(shard_reports, tmp_path, capsys):
    merged, junit, page = (tmp_path / name for name in ("merged.json", "junit.xml", "p.html"))
    status = main(["merge", *map(str, shard_reports), "--report", str(merged),
                   "--junitxml", str(junit), "--html", str(page)])
    out = capsys.readouterr().out
    assert status == 1
    document = json.loads(merged.read_text())
    first, second = f"{REAL_MODEL.stem}-1", f"{REAL_MODEL.stem}-2"
    assert [p["name"] for p in document["policies"]] == [first, second, "broken"]  # run order
    assert "shard" not in document and document["level_met"] is False
    outcomes = {p["name"]: {c["id"]: c["outcome"] for c in p["clauses"]}
                for p in document["policies"]}
    assert outcomes == {first: {"GRAPH-01": "passed", "PAR-01": "passed"},
                        second: {"GRAPH-01": "passed", "PAR-01": "failed"}, "broken": {}}
    assert "not a zip archive" in document["policies"][2]["open_failure"]
    assert document["policies"][1]["statistics"]["PAR-01"]["observations"] > 0
    assert "0 of 3 policies meet the requested level Standard" in out
    cases = ET.parse(junit).getroot().find("testsuite")
    assert (cases.get("tests"), cases.get("failures")) == ("5", "2")
    failed = [c for c in cases.iter("testcase") if c.find("failure") is not None]
    assert [(c.get("classname"), c.get("name").split()[0]) for c in failed] == \
        [(second, "PAR-01"), ("broken", "opens")]
    properties = {p.get("name"): p.get("value") for p in failed[0].iter("property")}
    assert properties["clause"] == "PAR-01" and int(properties["observations"]) > 0
    assert f'id="{second}"' in page.read_text() or second in page.read_text()


def test_a_shard_is_the_same_whatever_the_order_of_its_models(conformance, shard_reports,
                                                             unclamped_real, tmp_path, capsys):
    """Given in another order (and cut short, or misused, it writes no report: missing)."""
    zoo = _mixed_zoo(unclamped_real, tmp_path / "elsewhere")  # the same files, elsewhere
    pairs = [zoo[i:i + 4] for i in range(0, len(zoo), 4)]
    again = tmp_path / "again.json"
    # broken.zip first: the two copies of the real model keep their order, hence their names
    run = conformance.run(*pairs[2], *pairs[0], *pairs[1], "--shard", "2/3",
                          "--report", str(again), "-k", "GRAPH-01 or PAR-01")
    assert run.ret == 1, run.stdout
    assert main(["merge", str(shard_reports[0]), str(again), str(shard_reports[2])]) == 1
    assert "0 of 3 policies meet the requested level Standard" in capsys.readouterr().out
    misused = tmp_path / "misused.json"
    run = conformance.run(*zoo, str(tmp_path / "no-such-folder"), "--shard", "2/3",
                          "--report", str(misused))
    assert run.ret == pytest.ExitCode.USAGE_ERROR and not misused.exists()


def test_merge_refuses_a_shard_missing_twice_or_of_another_run(shard_reports, tmp_path,
                                                              capsys):
    first, second, third = map(str, shard_reports)

    def refused(*paths) -> str:
        assert main(["merge", *map(str, paths)]) == 2
        return capsys.readouterr().err

    assert "shard(s) 2/3 missing: no report of it among the 2 given, so 1 of the 3 policies " \
        f"({REAL_MODEL.stem}-1) has no verdict" in refused(first, third)  # dealt by name
    assert f"{first} is given twice" in refused(first, first, second, third)
    document = json.loads(shard_reports[1].read_text())
    shard, [policy] = document["shard"], document["policies"]
    clause = policy["clauses"][0]
    for edit, says in (
            ({"suite_version": "0.0.1"}, "suite_version '0.0.1', but"),
            ({"level_requested": "Basic"}, "level_requested 'Basic', but"),
            ({"level_requested": "gold"}, "settings (suite_version"),
            ({"report_version": True}, "a report of layout True"),
            ({"shard": {**shard, "policies": ["other"]}}, "of another set of policies"),
            ({"shard": {**shard, "index": 1}}, "are both shard 1/3"),
            ({"shard": {**shard, "index": True}}, "not index, total, policies"),
            ({"shard": {**shard, "sha256": {**shard["sha256"], "broken": "0" * 64}}},
             "was given other files for broken than"),
            ({"shard": {**shard, "options": {**shard["options"], "keyword": "GRAPH"}}},
             "ran with keyword 'GRAPH', but"),
            ({"shard": {"index": "2"}}, "not index, total, policies"),
            ({"policies": []}, "judged 0 of the 1 policies dealt to it"),  # deselected, -k
            ({"policies": [policy, policy]}, "which is not dealt to it once"),
            ({"policies": [{**policy, "clauses": [{k: v for k, v in clause.items()
                                                   if k != "detail"}]}]},
             "is not as --report writes it (KeyError: 'detail')"),
            ({"policies": [{**policy, "clauses": ["passed"]}]}, "is not as --report writes it"),
            ({"policies": [{**policy, "statistics": {"NOPE-01": {}}}]},
             "the reports hold what --report never writes")):
        odd = tmp_path / "odd.json"
        odd.write_text(json.dumps({**document, **edit}))
        assert says in refused(first, odd, third), edit
    odd.write_text("[" * 200_000 + "]" * 200_000)
    assert "not readable as JSON (RecursionError" in refused(first, odd, third)
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: v for k, v in document.items() if k != "shard"}))
    assert "not the report of a shard" in refused(first, plain, third)
    assert "no report given" in refused()
    assert shard_reports[1].read_text() == json.dumps(document, indent=2) + "\n"  # untouched


@pytest.mark.slow  # five suite runs in subprocesses: `make test-slow`
def test_shards_and_their_merge_give_the_serial_verdicts(unclamped_real, fixture_models,
                                                         tmp_path):
    """Each shard, the serial run and the merge are processes of their own, as on N CI
    machines; one shard runs on two workers (pytest-xdist) inside its machine."""
    zoo = _mixed_zoo(unclamped_real, tmp_path / "zoo")
    for name in ("dqn", "a2c_multidiscrete"):  # and two fixture models with their exports
        subprocess.run([sys.executable, "-m", "policy_onnx", "export", str(fixture_models[name]),
                        "-o", str(tmp_path / "zoo" / f"{name}.onnx")], check=True, cwd=ROOT)
        zoo += ["--model", str(fixture_models[name]),
                "--onnx", str(tmp_path / "zoo" / f"{name}.onnx")]

    def run(*args):
        command = [sys.executable, "-m", "pytest", str(CONFORMANCE), "-p", "no:cacheprovider",
                   "--hypothesis-profile", "ci", *zoo, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)

    serial = run("--report", str(tmp_path / "serial.json"))
    shards = [run("--shard", f"{k}/3", "--report", str(tmp_path / "shards" / f"{k}.json"),
                  *(("-n", "2") if k == 1 else ())) for k in (1, 2, 3)]
    merged = subprocess.run(
        [sys.executable, "-m", "policy_onnx", "merge",
         *map(str, sorted((tmp_path / "shards").glob("*.json"))),
         "--report", str(tmp_path / "merged.json"), "--junitxml", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "created: 2/2 workers" in shards[0].stdout
    assert serial.returncode == merged.returncode == 1, merged.stderr
    serial_document = json.loads((tmp_path / "serial.json").read_text())
    merged_document = json.loads((tmp_path / "merged.json").read_text())
    # Discrete disagreements at a rounding tie are counted where they fall: a pytest-xdist
    # worker runs torch and ONNX Runtime on fewer threads, which sum in another order.
    for document in (serial_document, merged_document):
        for policy in document["policies"]:
            for counts in policy["statistics"].values():
                counts.pop("rounding_ties")
    assert _verdicts(merged_document) == _verdicts(serial_document)
    assert {p["name"]: p["level_met"] for p in merged_document["policies"]} == {
        f"{REAL_MODEL.stem}-1": True, f"{REAL_MODEL.stem}-2": False, "broken": False,
        "dqn": True, "a2c_multidiscrete": True}
    failing = {c["id"] for c in merged_document["policies"][1]["clauses"]
               if c["outcome"] == "failed"}
    assert failing == FAILS_UNCLAMPED
    assert "3 of 5 policies meet the requested level Standard; NOT MET: " \
        f"{REAL_MODEL.stem}-2, broken" in merged.stdout
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert int(suite.get("failures")) == len(FAILS_UNCLAMPED) + 1
