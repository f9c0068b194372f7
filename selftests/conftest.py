"""Self-tests run the conformance suite the way a user does (in-process, one interpreter) and
check its verdicts clause by clause."""

from __future__ import annotations

import hashlib
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

# Imported once here, before any in-process run: pytester restores sys.modules after each run,
# and torch cannot be imported twice in one process.
import onnx
import onnxruntime  # noqa: F401
import pytest
import sb3_contrib  # noqa: F401
import stable_baselines3  # noqa: F401
import torch  # noqa: F401

import numpy as np
from hypothesis import Phase, settings

from policy_onnx.artifact import Artifact
from policy_onnx.export import export
from policy_onnx.load import load_model
from policy_onnx.model import Reference
from fixtures.models import FIXTURES, build

# Mutants are judged by which clauses fail, not by the minimal example: skip shrinking there,
# and draw half the ci profile's examples (the rows the searches find come first in each).
settings.register_profile("mutation", parent=settings.get_profile("ci"), max_examples=20,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "conformance"
REAL_MODELS = ROOT / "fixtures" / "real_models"  # made outside this project (see its README)
REAL = REAL_MODELS / "clankers-cartpole"
REAL_MODEL = REAL / "cartpole_ppo_model.zip"
REAL_ONNX = REAL / "cartpole_ppo.onnx"
ZOO = REAL_MODELS / "rl-zoo"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class SuiteRun:
    ret: int
    stdout: str
    stderr: str
    verdicts: dict[str, str]  # clause ID -> passed / failed / skipped / error
    messages: dict[str, str]  # clause ID -> failure text or skip reason
    by_policy: dict[str, dict[str, str]]  # policy name -> its verdicts (runs of several models)

    def with_outcome(self, outcome: str) -> set[str]:
        return {cid for cid, v in self.verdicts.items() if v == outcome}


class Conformance:
    """Runs `pytest conformance ARGS` in-process and reads the per-clause verdicts."""

    def __init__(self, pytester: pytest.Pytester):
        self.pytester = pytester

    def run(self, *args: str, profile: str = "ci") -> SuiteRun:
        result = self.pytester.runpytest_inprocess(
            str(CONFORMANCE), "-p", "no:cacheprovider", "--hypothesis-profile", profile, *args)
        by_policy: dict[str, dict[str, str]] = {}
        messages: dict[str, str] = {}
        # A run that stopped with a usage error has no hook recorder.
        reprec = getattr(result, "reprec", None)
        reports = reprec.getreports("pytest_runtest_logreport") \
            if hasattr(reprec, "getreports") else []
        for report in reports:
            properties = dict(report.user_properties)
            if "clause" not in properties:
                continue
            clause = properties["clause"]
            if report.when == "call" or report.outcome != "passed":
                outcome = report.outcome
                if report.outcome == "failed" and (report.when != "call"
                                                   or "suite_error" in properties):
                    outcome = "error"
                by_policy.setdefault(properties["policy"], {})[clause] = outcome
                if report.outcome == "skipped":
                    messages[clause] = report.longrepr[2]
                elif report.outcome == "failed":
                    messages[clause] = report.longreprtext
        verdicts = next(iter(by_policy.values())) if len(by_policy) == 1 else {}
        return SuiteRun(result.ret, result.stdout.str(), result.stderr.str(), verdicts, messages,
                        by_policy)


@pytest.fixture
def conformance(pytester: pytest.Pytester) -> Conformance:
    return Conformance(pytester)


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every fixture model, built fresh for this session."""
    out = tmp_path_factory.mktemp("fixture-models")
    return {f.name: build(f, out) for f in FIXTURES}


def unclamped(model_path: Path, out_dir: Path) -> Path:
    """The raw Gaussian mean exported while the metadata claims the clamp is baked in."""
    path = export(load_model(model_path), out_dir / "unclamped.onnx", transform="clip")
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == "action_transform":
            entry.value = "none"
    onnx.save(proto, str(path))
    return path


@pytest.fixture(scope="session")
def unclamped_real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real model's artifact without its clamp: fails BEH-05, PAR-01 and PAR-02."""
    return unclamped(REAL_MODEL, tmp_path_factory.mktemp("unclamped"))


@pytest.fixture(scope="session", autouse=True)
def _pipeline_imported(fixture_models, tmp_path_factory):
    """Run load, export, oracle and runtime once in this process, so that every module they
    import lazily is in sys.modules before pytester's first snapshot (see the imports above)."""
    for name in ("ppo_default", "recurrent_ppo"):  # the recurrent export takes other paths
        loaded = load_model(fixture_models[name])
        path = export(loaded, tmp_path_factory.mktemp("warm-up") / f"{name}.onnx")
        Reference(loaded).find_out_of_bounds()
        Artifact(path).run(np.zeros((1, 4), dtype=np.float32))


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # a pytest-xdist worker (make test runs two)
        from policy_onnx.plugin import _share_the_cores

        _share_the_cores(config.workerinput["workercount"])


def pytest_runtest_logreport(report):
    """The mutant tests' outcomes, gathered where the run is summed up (the pytest-xdist
    controller sees only reports)."""
    from .mutants import BY_NAME, REPORT

    if report.when == "call":
        for name, value in report.user_properties:
            if name == "mutant":
                mutant, failed = value
                REPORT.record(BY_NAME[mutant], None if failed is None else set(failed))


def pytest_terminal_summary(terminalreporter):
    from policy_onnx import spec

    from .mutants import REPORT

    if REPORT.runs:
        terminalreporter.section("mutation report")
        for line in REPORT.lines([c.id for c in spec.CLAUSES]):
            terminalreporter.write_line(line)


def ci_example_step(name: str, example: str = "github-actions.yml") -> str:
    """The script of the step `name` of a GitHub Actions example in examples/, as written."""
    text = (ROOT / "examples" / example).read_text()
    block = re.search(rf"- name: {name}\n(?:\s+if: .*\n)?\s+run: \|\n((?:\s{{10}}.*\n)+)", text)
    return textwrap.dedent(block.group(1))
