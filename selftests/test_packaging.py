"""`pip install` of the project makes a pytest plugin and a console script that work from any
folder: checked in a throwaway venv, outside this repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig

import pytest

from policy_onnx import spec

from .conftest import REAL_MODEL, REAL_ONNX, ROOT, ci_example_step

pytestmark = pytest.mark.slow  # fresh venvs and subprocess runs: `make test-slow`


def _run(*command, cwd, timeout=600):
    """As in a user's shell: no paths or options of ours, and bytecode caching on (as Python's
    default; this sandbox turns it off)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTEST_ADDOPTS", "PYTHONDONTWRITEBYTECODE")}
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
    # From a copy of the sources: pip builds in the tree, and a build/ folder left there by an
    # earlier build (or a concurrent one) would be installed in place of the sources.
    source = tmp_path_factory.mktemp("source") / "policy-onnx"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".venv", "build", ".git", ".hypothesis", ".pytest_cache", "__pycache__", "*.egg-info"))
    done = _run(python, "-m", "pip", "install", "--quiet", "--no-deps", source, cwd=venv)
    assert done.returncode == 0, done.stderr
    # The console script pip would have installed with pytest itself.
    script = venv / "bin" / "pytest"
    script.write_text(f"#!{python}\nimport sys\nfrom pytest import console_main\n"
                      "sys.exit(console_main())\n")
    script.chmod(0o755)
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


@pytest.fixture
def project(tmp_path):
    """An ordinary project folder of a user: conftest files of its own, a model and artifacts."""
    (tmp_path / "conftest.py").write_text("import pytest\n\n\n@pytest.fixture\ndef mine():\n"
                                          "    return 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "conftest.py").write_text("")
    (tmp_path / "m.zip").write_bytes(REAL_MODEL.read_bytes())
    (tmp_path / "a.onnx").write_bytes(REAL_ONNX.read_bytes())
    return tmp_path


def _clean(done) -> None:
    """No crash, no traceback, no warning meant for pytest's developers."""
    output = done.stdout + done.stderr
    for bad in ("INTERNALERROR", "Traceback", "PytestAssertRewriteWarning"):
        assert bad not in output, output


def test_installed_suite_in_a_project_with_conftest_files(installed, project):
    done = _run(installed / "bin" / "policy-onnx", "check", "m.zip", "a.onnx", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    _clean(done)
    # policy-onnx check leaves nothing in the user's folder
    assert sorted(p.name for p in project.iterdir()) == ["a.onnx", "conftest.py", "m.zip",
                                                        "tests"]
    done = _run(installed / "bin" / "pytest", "--pyargs", "policy_onnx.conformance", "--model",
                "m.zip", "--hypothesis-profile", "ci", "-q", cwd=project)
    assert done.returncode == 0, done.stdout + done.stderr
    _clean(done)
    # -q: the level line, not a row per clause
    assert "level: Basic PASS, Standard PASS, Extended PASS" in done.stdout
    assert "GRAPH-01  Basic     passed" not in done.stdout
    assert not (project / ".hypothesis").exists()  # pytest's own cache is the user's pytest's


def test_printed_hints_work_where_they_are_printed(installed, project, unclamped_real):
    """A failing clause prints the commands that replay it and rerun the search: run as
    printed, from the same folder, with the installed suite not on PATH."""
    (project / "bad.onnx").write_bytes(unclamped_real.read_bytes())
    done = _run(installed / "bin" / "pytest", "--pyargs", "policy_onnx.conformance",
                "--model", "m.zip", "--onnx", "bad.onnx", "--hypothesis-profile", "ci",
                "--report", "out/report.json", "-k", "PAR-02", cwd=project)
    assert done.returncode == 1
    replay = re.search(r"replay it: (.+)", done.stdout).group(1)
    rerun = re.search(r"Reproduce the search: (.+)", done.stdout).group(1)
    assert shlex.split(replay)[0] == str(installed / "bin" / "policy-onnx")
    replayed = _run(*shlex.split(replay), cwd=project)
    assert replayed.returncode == 1 and "[PAR-02]" in replayed.stdout, replayed.stderr
    again = _run(*shlex.split(rerun), cwd=project)
    assert again.returncode == 1 and "[PAR-02] max |final - predict|" in again.stdout
    nothing = _run(installed / "bin" / "pytest", "--pyargs", "policy_onnx.conformance",
                   cwd=project)
    example = re.search(r"\(e\.g\. (.+)\)", nothing.stderr).group(1)
    assert nothing.returncode == 4 and example.endswith("--pyargs policy_onnx.conformance "
                                                        "--model m.zip")


def test_the_ci_example_runs_as_written(installed, project, unclamped_real):
    (project / "models").mkdir()
    (project / "models" / "policy.zip").write_bytes(REAL_MODEL.read_bytes())
    (project / "models" / "policy.onnx").write_bytes(unclamped_real.read_bytes())
    (project / ".policy-onnx").symlink_to(installed)
    env = {**os.environ, "MODEL": "models/policy.zip", "ONNX": "models/policy.onnx"}
    done = subprocess.run(["bash", "-e", "-c", ci_example_step("Check the artifact")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr  # the unclamped artifact fails
    kept = project / "conformance"  # the folder the workflow uploads
    assert (kept / "report.json").is_file() and (kept / "junit.xml").is_file()
    assert "PAR-01: margin" in (kept / "report.html").read_text()  # the page it uploads
    saved = sorted(p.name for p in (kept / "counterexamples" / "policy").iterdir())
    assert saved == ["PAR-01.json", "PAR-02.json"]


MISUSE = {  # command (in the project folder) -> what the one line of error says
    "export to a missing folder": (["policy-onnx", "export", "m.zip", "-o", "nodir/x.onnx"],
                                   2, "the folder nodir does not exist"),
    "replay a missing file": (["policy-onnx", "replay", "nope.json"], 2, "nope.json: no such file"),
    "replay a JSON that is no counterexample": (
        ["policy-onnx", "replay", "tests/other.json"], 2, "not a policy-onnx counterexample"),
    "an unknown hypothesis profile": (
        ["pytest", "--pyargs", "policy_onnx.conformance", "--model", "m.zip",
         "--hypothesis-profile", "nope"], 4, "--hypothesis-profile nope: no such profile"),
    "spec --write on an installed copy": (["policy-onnx", "spec", "--write"], 2,
                                          "run it in a checkout of policy-onnx"),
}


@pytest.mark.parametrize("case", MISUSE)
def test_misuse_is_one_line_of_error(installed, project, case):
    command, status, message = MISUSE[case]
    (project / "tests" / "other.json").write_text('{"observations": []}')
    done = _run(installed / "bin" / command[0], *command[1:], cwd=project)
    assert done.returncode == status, done.stdout + done.stderr
    _clean(done)
    assert message in done.stderr


def test_installed_spec_document_matches_its_registry(installed, project):
    done = _run(installed / "bin" / "policy-onnx", "spec", cwd=project)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(installed)) and f"POLICY_ONNX_SPEC {spec.SPEC_VERSION}" in done.stdout


def test_the_zoo_ci_example_runs_as_written(installed, project):
    """Its shard jobs, one after the other in the project as each machine has it, their reports
    laid out as actions/download-artifact@v4 leaves them (each artifact in a folder of its
    name), then its merge job: one verdict of the zoo."""
    example = (ROOT / "examples" / "github-actions-zoo.yml").read_text()
    env = dict(re.findall(r"^  (ZOO|SHARDS): (\S+)", example, re.MULTILINE))
    matrix = re.search(r"shard: \[([\d, ]+)\]", example).group(1)
    assert [int(k) for k in matrix.split(",")] == list(range(1, int(env["SHARDS"]) + 1))
    zoo = project / env["ZOO"]
    zoo.mkdir()
    (zoo / "cartpole.zip").write_bytes(REAL_MODEL.read_bytes())
    (zoo / "broken.zip").write_bytes(REAL_MODEL.read_bytes()[:2000])  # cannot be opened
    (project / ".policy-onnx").symlink_to(installed)
    for shard in matrix.split(","):
        done = subprocess.run(["bash", "-e", "-c", ci_example_step("Check this shard",
                                                                   "github-actions-zoo.yml")],
                              cwd=project, env={**os.environ, **env, "SHARD": shard.strip()},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode in (0, 1), done.stdout + done.stderr
        (project / "shards").mkdir(exist_ok=True)
        (project / "conformance").rename(project / "shards" / f"conformance-shard-{shard.strip()}")
    merged = subprocess.run(["bash", "-e", "-c", ci_example_step("Merge the shards",
                                                                 "github-actions-zoo.yml")],
                            cwd=project, env={**os.environ, **env}, capture_output=True,
                            text=True, timeout=300)
    assert merged.returncode == 1, merged.stdout + merged.stderr  # broken.zip is not met
    assert "1 of 2 policies meet the requested level Standard; NOT MET: broken" in merged.stdout
    kept = project / "conformance"
    assert [p["name"] for p in json.loads((kept / "report.json").read_text())["policies"]] == \
        ["broken", "cartpole"]
    assert (kept / "junit.xml").is_file() and "cartpole" in (kept / "report.html").read_text()
