"""`python -m policy_onnx` as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest

from policy_onnx.artifact import Artifact

from .conftest import REAL_MODEL, REAL_ONNX, ROOT, ZOO, sha256

pytestmark = pytest.mark.slow  # subprocesses of a few seconds each: `make test-slow`


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "policy_onnx", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_export_writes_a_complete_artifact(tmp_path):
    before = sha256(REAL_MODEL)
    out = tmp_path / "m.onnx"
    done = cli("export", str(REAL_MODEL), "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out} (PPO, action_transform=none)"
    artifact = Artifact(out)
    assert [t.name for t in artifact.inputs] == ["obs"]
    assert artifact.metadata["training_framework"] == ["stable-baselines3"]
    assert sha256(REAL_MODEL) == before
    assert not list(tmp_path.glob("*.partial"))


def test_export_takes_images_in_the_layout_asked_for(fixture_models, tmp_path):
    import json

    model = fixture_models["ppo_cnn"]  # 36x36x4 frames, saved channel-first by SB3
    for layout, shape in (("HWC", [36, 36, 4]), ("CHW", [4, 36, 36])):
        out = tmp_path / f"{layout}.onnx"
        done = cli("export", str(model), "-o", str(out), "--image-layout", layout)
        assert done.returncode == 0, done.stderr
        declared = json.loads(Artifact(out).metadata["observation_space"][0])
        assert (declared["layout"], declared["shape"]) == (layout, shape)
    wrong = cli("export", str(model), "--image-layout", "WHC")
    assert wrong.returncode == 2 and "invalid choice: 'WHC'" in wrong.stderr


def test_export_bakes_in_the_statistics_found_beside_the_model(tmp_path):
    agent = ZOO / "ars" / "Pendulum-v1_1" / "Pendulum-v1.zip"
    statistics = agent.parent / "Pendulum-v1" / "vecnormalize.pkl"
    done = cli("export", str(agent), "-o", str(tmp_path / "a.onnx"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (f"wrote {tmp_path / 'a.onnx'} (ARS, action_transform=none, "
                                   f"normalizing observations with {statistics})")
    raw = cli("export", str(agent), "-o", str(tmp_path / "b.onnx"), "--vecnormalize", "none")
    assert raw.stdout.strip() == f"wrote {tmp_path / 'b.onnx'} (ARS, action_transform=none)"


def test_export_of_a_bad_model_is_one_line_of_error(tmp_path):
    bad = tmp_path / "m.zip"
    bad.write_text("not a model")
    done = cli("export", str(bad), "-o", str(tmp_path / "m.onnx"))
    assert done.returncode == 2
    assert done.stderr == f"error: --model {bad}: not a zip archive; pass the .zip written by " \
                          "model.save() of Stable-Baselines3\n"
    assert not (tmp_path / "m.onnx").exists()


def test_help_shows_examples():
    done = cli("--help")
    assert done.returncode == 0
    assert "policy-onnx export m.zip -o m.onnx" in done.stdout


def test_spec_check_passes_on_the_committed_document():
    done = cli("spec", "--check")
    assert done.returncode == 0, done.stderr


def test_check_runs_the_suite_with_its_verdict_as_exit_status(tmp_path, unclamped_real):
    import json

    report = tmp_path / "verdict.json"
    done = cli("check", str(REAL_MODEL), str(REAL_ONNX), "--report", str(report), "--", "-q",
               "--hypothesis-profile", "ci")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "requested Standard: met" in done.stdout
    assert json.loads(report.read_text())["level_met"] is True
    failing = cli("check", str(REAL_MODEL), str(unclamped_real), "--", "-k", "PAR-01")
    assert failing.returncode == 1
    assert "PAR-01    Standard  failed" in failing.stdout


def test_only_check_takes_pytest_arguments():
    done = cli("export", str(REAL_MODEL), "--", "-k", "PAR-01")
    assert done.returncode == 2
    assert "only check passes arguments after -- to pytest, not export" in done.stderr


def test_check_passes_trust_model_code_on(tmp_path):
    """policy-onnx check --trust-model-code lets SB3 unpickle the whole zip (here: a payload
    that leaves a marker), as pytest --trust-model-code does."""
    from .test_loading import _payload_in, _rewrite_zip

    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.zip"
    _rewrite_zip(REAL_MODEL, crafted, _payload_in("unknown_extra_key", marker))
    cli("check", str(crafted), str(REAL_ONNX), "--", "-k", "GRAPH-01")
    assert not marker.exists()
    cli("check", str(crafted), str(REAL_ONNX), "--trust-model-code", "--", "-k", "GRAPH-01")
    assert marker.exists()


@pytest.mark.parametrize("given, kept", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_torch_is_imported_with_its_threads_waiting_passively_unless_told_otherwise(
        tmp_path, given, kept):
    """OpenMP reads OMP_WAIT_POLICY when torch is first imported: the run sets it before, and
    keeps a value the user set. (A probe records the value at torch's import.)"""
    import os

    seen = tmp_path / "seen"
    (tmp_path / "probe.py").write_text(
        "import os, sys\n"
        "class AtTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch':\n"
        f"            open({str(seen)!r}, 'w').write(str(os.environ.get('OMP_WAIT_POLICY')))\n"
        "            sys.meta_path.remove(self)\n"
        "sys.meta_path.insert(0, AtTorch())\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(tmp_path)
    if given:
        env["OMP_WAIT_POLICY"] = given
    done = subprocess.run([sys.executable, "-m", "pytest", "conformance", "-p", "probe",
                           "--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "-q",
                           "-k", "GRAPH-01"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert "1 passed" in done.stdout, done.stdout + done.stderr
    assert seen.read_text() == kept
