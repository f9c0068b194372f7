"""`python -m policy_onnx` as a user runs it: a real subprocess."""

from __future__ import annotations

import subprocess
import sys

from policy_onnx.artifact import Artifact

from .conftest import REAL_MODEL, ROOT, sha256


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
