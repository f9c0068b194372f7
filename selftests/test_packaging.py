"""`pip install` of the project makes a pytest plugin and a console script that work from any
folder: checked in a throwaway venv, outside this repository."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

from .conftest import REAL_MODEL, REAL_ONNX, ROOT


def _run(*command, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTEST_ADDOPTS")}
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv with this project pip-installed (not editable) and, to save a multi-GB download,
    the already installed dependencies made importable through a .pth file."""
    venv = tmp_path_factory.mktemp("throwaway") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=venv).stdout.strip()
    with open(os.path.join(site, "suite-dependencies.pth"), "w") as pth:
        pth.write(sysconfig.get_paths()["purelib"] + "\n")
    done = _run(python, "-m", "pip", "install", "--quiet", "--no-deps", ROOT, cwd=venv)
    assert done.returncode == 0, done.stderr
    return venv


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_pytest_plugin_runs_the_suite_from_any_folder(installed, tmp_path, workers):
    done = _run(installed / "bin" / "python", "-m", "pytest", "--pyargs",
                "policy_onnx.conformance", "-p", "no:cacheprovider", "--model", REAL_MODEL,
                "--onnx", REAL_ONNX, "--hypothesis-profile", "ci", *workers, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "level: Basic PASS, Standard PASS, Extended PASS" in done.stdout
    assert ("2 workers" in done.stdout) == bool(workers)  # workers find the plugin installed
    assert str(installed) in _run(installed / "bin" / "python", "-c",
                                  "import policy_onnx; print(policy_onnx.__file__)",
                                  cwd=tmp_path).stdout


def test_console_script_checks_and_exports(installed, tmp_path):
    script = installed / "bin" / "policy-onnx"
    done = _run(script, "export", REAL_MODEL, "-o", tmp_path / "m.onnx", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    done = _run(script, "check", REAL_MODEL, tmp_path / "m.onnx", "--report",
                tmp_path / "v.json", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "v.json").is_file()
    assert "policy-onnx check m.zip a.onnx" in _run(script, "--help", cwd=tmp_path).stdout
