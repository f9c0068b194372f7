"""The pytest plugin of the conformance suite: options, session fixtures, report header and summary.

Loaded by the repository's conftest.py. The model is opened (safely) once per session while
pytest configures, so that a bad --model or --onnx is a usage error before any test runs; the
export is a session fixture.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from . import __version__, spec
from .artifact import Artifact, ArtifactError, sha256
from .load import LoadedModel, ModelLoadError, load_model
from .metadata import TRANSFORMS
from .parity import ParityStats
from .report import Verdicts
from .tolerance import RULE, tolerance

settings.register_profile("quick", max_examples=20, deadline=None)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          database=None, print_blob=True)
DEFAULT_PROFILE = "ci" if os.environ.get("CI") else "quick"
settings.load_profile(DEFAULT_PROFILE)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("policy-onnx", "policy-onnx conformance (POLICY_ONNX_SPEC "
                            f"{spec.SPEC_VERSION})")
    group.addoption(
        "--model", metavar="ZIP",
        help="SB3 model .zip to check. Without --onnx the suite exports it once with its own "
             "exporter and checks that artifact. Default: none.")
    group.addoption(
        "--onnx", metavar="FILE",
        help="ONNX artifact exported elsewhere to check. With --model it is checked against that "
             "model; alone, the clauses that need the model are skipped. Default: none.")
    group.addoption(
        "--action-transform", choices=TRANSFORMS, default="none",
        help="artifact style of the suite's own export: 'none' bakes predict()'s post-processing "
             "into the graph; 'clip' (unsquashed policies) and 'tanh' (squash_output) leave it to "
             "the runtime. Ignored with --onnx. Default: none.")
    group.addoption(
        "--level", choices=[level.name.lower() for level in spec.Level], default="standard",
        help="conformance level the run must reach: exit status 0 only when it is met (a Basic "
             "run does not fail on a Standard-only clause). Default: standard.")
    group.addoption(
        "--report", metavar="JSON",
        help="write the per-clause verdicts, the level reached, the model's and artifact's "
             "SHA-256, the settings and the parity statistics to this JSON file. Default: none.")
    group.addoption(
        "--trust-model-code", action="store_true", default=False,
        help="let Stable-Baselines3 unpickle everything in --model, running any code the file "
             "holds. Only for models you trust that need custom classes. Default: off (only "
             "allow-listed classes are unpickled).")


@dataclass
class SuiteState:
    model_path: Path | None
    onnx_path: Path | None
    transform: str
    loaded: LoadedModel | None
    given_artifact: Artifact | None  # the --onnx artifact
    trust_code: bool = False
    requested_level: spec.Level = spec.Level.STANDARD
    report_path: Path | None = None
    stats: ParityStats = field(default_factory=ParityStats)
    verdicts: Verdicts = field(default_factory=Verdicts)
    exported_path: Path | None = None
    counterexample_dir: Path | None = None  # set by the session; beside --report if given

    @cached_property
    def action_kind(self) -> str:
        """The model's action space type, or else the one the artifact declares."""
        if self.loaded:
            return type(self.loaded.sb3.action_space).__name__
        return self.given_artifact.declared_kind

    @cached_property
    def structure(self) -> str:
        """plain, masked (action masks) or recurrent: the model's, else the artifact's."""
        return self.loaded.structure if self.loaded else self.given_artifact.structure

    @cached_property
    def reference(self):
        from .model import Reference

        return Reference(self.loaded) if self.loaded else None

    def save_counterexample(self, clause_id: str, batch) -> Path:
        """The failing batch of a parity clause, as a file `policy-onnx replay` reads."""
        artifact = self.onnx_path or self.exported_path
        path = self.counterexample_dir / f"{clause_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "clause": clause_id, "model": str(self.model_path.resolve()),
            "artifact": str(artifact.resolve()), "trust_model_code": self.trust_code,
            "observations": batch.observations.tolist(),
            "masks": None if batch.masks is None else batch.masks.tolist()}))
        return path

    def reproduce(self, clause_id: str) -> str:
        words = ["pytest", "conformance"]
        if self.model_path:
            words += ["--model", str(self.model_path)]
        if self.onnx_path:
            words += ["--onnx", str(self.onnx_path)]
        elif self.transform != "none":
            words += ["--action-transform", self.transform]
        words += ["-k", clause_id, "--hypothesis-profile", settings.get_current_profile_name()]
        return shlex.join(words)


STATE = pytest.StashKey[SuiteState]()


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id): the POLICY_ONNX_SPEC clause the test checks")
    model_path = _path(config.getoption("model"))
    onnx_path = _path(config.getoption("onnx"))
    transform = config.getoption("action_transform")
    try:
        given_artifact = Artifact(onnx_path) if onnx_path else None
        loaded = load_model(model_path, trust_code=config.getoption("trust_model_code")) \
            if model_path else None
        if loaded and not onnx_path:
            from .heads import head_for

            head_for(loaded, transform)
    except (ModelLoadError, ArtifactError) as exc:
        raise pytest.UsageError(str(exc)) from None
    except ValueError as exc:  # a transform that does not fit the policy
        raise pytest.UsageError(f"--action-transform {transform}: {exc}") from None
    config.stash[STATE] = SuiteState(
        model_path, onnx_path, transform, loaded, given_artifact,
        trust_code=config.getoption("trust_model_code"),
        requested_level=spec.Level[config.getoption("level").upper()],
        report_path=_path(config.getoption("report")))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[STATE]
    if state.model_path or state.onnx_path:
        return
    if any(item.get_closest_marker("clause") for item in items):
        raise pytest.UsageError(
            "nothing to check: give --model m.zip (the suite exports it), --onnx a.onnx, "
            "or both (e.g. pytest conformance --model m.zip)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("clause")
    if marker is None:
        return
    clause = spec.clause(marker.args[0])
    # JUnit XML carries these as testcase properties (pytest.ini sets junit_family = xunit1,
    # the family whose schema has them).
    item.user_properties += [("clause", clause.id), ("level", clause.level.label)]
    state = item.config.stash[STATE]
    if clause.needs_model and not state.loaded:
        pytest.skip(f"{clause.id} compares the artifact with the trained model: "
                    "it needs --model m.zip")
    if not clause.applies(state.action_kind, state.structure):
        scope = f"{', '.join(clause.kinds)} action spaces"
        if clause.structures != spec.STRUCTURES:
            scope += f" of {', '.join(clause.structures)} policies"
        pytest.skip(f"{clause.id} not applicable: it concerns {scope}; this is a "
                    f"{state.structure} {state.action_kind} policy")


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[STATE]
    lines = [f"policy-onnx {__version__}: POLICY_ONNX_SPEC {spec.SPEC_VERSION}, "
             f"hypothesis profile {settings.get_current_profile_name()!r}",
             f"parity tolerance: {RULE}"]
    if state.loaded:
        lines.append(f"model: {state.model_path} ({state.loaded.algorithm}, "
                     f"sha256 {sha256(state.model_path)})")
    if state.onnx_path:
        lines.append(f"artifact: {state.onnx_path} (sha256 {sha256(state.onnx_path)})")
    elif state.loaded:
        lines.append(f"artifact: exported from the model by policy-onnx at session start "
                     f"(action_transform={state.transform})")
    return lines


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    report = yield
    item.config.stash[STATE].verdicts.record(report)
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The exit status follows the requested level; the JSON report is written."""
    state = session.config.stash.get(STATE, None)
    if state is None or not state.verdicts.by_clause:
        return
    reached, _ = state.verdicts.level_reached(state.structure, state.action_kind)
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        met = reached is not None and reached >= state.requested_level
        session.exitstatus = pytest.ExitCode.OK if met else pytest.ExitCode.TESTS_FAILED
    if state.report_path:
        state.verdicts.write_json(state.report_path, _report_header(state), state.structure,
                                  state.action_kind, state.requested_level,
                                  state.stats.as_dict())


def _report_header(state: SuiteState) -> dict:
    artifact = state.onnx_path or state.exported_path
    return {
        "suite_version": __version__,
        "spec_version": spec.SPEC_VERSION,
        "hypothesis_profile": settings.get_current_profile_name(),
        "tolerance": RULE,
        "model": {"path": str(state.model_path), "sha256": sha256(state.model_path),
                  "algorithm": state.loaded.algorithm} if state.loaded else None,
        "artifact": {"path": str(artifact), "sha256": sha256(artifact),
                     "exported_by_suite": state.onnx_path is None} if artifact else None,
        "action_space": state.action_kind,
        "structure": state.structure,
    }


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or not (state.stats.observations or state.exported_path
                             or state.verdicts.by_clause):
        return
    write = terminalreporter.write_line
    terminalreporter.section("policy-onnx")
    for line in state.verdicts.summary_lines(state.structure, state.action_kind,
                                             state.requested_level):
        write(line)
    if state.report_path:
        write(f"report: {state.report_path}")
    if state.exported_path:
        write(f"exported artifact: {state.exported_path} (sha256 {sha256(state.exported_path)})")
    for clause_id, checked in sorted(state.stats.observations.items()):
        if spec.clause(clause_id).kinds == spec.BOX:
            detail = (f", {state.stats.out_of_bounds[clause_id]:,} with the mean outside the "
                      "action bounds")
        elif state.action_kind != "Box":
            detail = f", {state.stats.near_ties[clause_id]:,} disagreeing only at a rounding tie"
        else:
            detail = ""
        write(f"{clause_id}: {checked:,} observations checked against predict(){detail}")


def _progress(config: pytest.Config, line: str) -> None:
    """A line on the terminal now, from inside a test's capture (long runs: the export)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)


# --- session fixtures -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def suite(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> SuiteState:
    state = pytestconfig.stash[STATE]
    state.counterexample_dir = (state.report_path.parent if state.report_path
                                else tmp_path_factory.getbasetemp()) / "counterexamples"
    return state


@pytest.fixture(scope="session")
def reference(suite: SuiteState):
    """The trained model as the oracle (clauses that need it are skipped without --model)."""
    if suite.reference is None:
        pytest.skip("needs --model m.zip")
    return suite.reference


@pytest.fixture(scope="session")
def artifact(suite: SuiteState, tmp_path_factory: pytest.TempPathFactory,
             pytestconfig: pytest.Config) -> Artifact:
    """The artifact under test: --onnx, or the suite's own export of --model (once a session)."""
    if suite.given_artifact:
        return suite.given_artifact
    from .export import export

    target = tmp_path_factory.mktemp("export") / f"{suite.model_path.stem}.onnx"
    started = time.perf_counter()
    try:
        suite.exported_path = export(suite.loaded, target, transform=suite.transform)
        _progress(pytestconfig, f"policy-onnx: exported {suite.model_path} to {target} in "
                                f"{time.perf_counter() - started:.1f} s")
    except Exception as exc:  # the exporter's own failure, reported once per test, no traceback
        failure = f"the exporter failed on {suite.model_path}: {type(exc).__name__}: {exc}"
    else:
        return Artifact(suite.exported_path)
    pytest.fail(failure, pytrace=False)


@pytest.fixture(scope="session")
def probe_observations(suite: SuiteState, artifact: Artifact):
    """A fixed mix of observations for the behaviour clauses: from the model's observation space
    with --model, else unbounded rows of the artifact's obs_dim."""
    from .strategies import ObservationDomain

    if suite.reference is not None:
        return suite.reference.domain.probe()
    if artifact.obs_dim is None:
        pytest.fail("cannot make observations: obs has no static obs_dim (see GRAPH-07)",
                    pytrace=False)
    return ObservationDomain.unbounded(artifact.obs_dim).probe()


@pytest.fixture(scope="session")
def clip_seeds(reference):
    """Observations whose pre-clip mean leaves the action bounds (empty if none was found)."""
    return reference.find_out_of_bounds()


@pytest.fixture(scope="session")
def action_tolerance(suite: SuiteState, artifact: Artifact):
    """obs -> per-element tolerance for comparing actions: the parity rule with --model; without
    it, the rule's fixed part in the declared action units (no oracle to measure noise)."""
    if suite.reference is not None:
        return suite.reference.tolerance
    box = artifact.declared_box()
    fixed = tolerance(box.low, box.high) if box else tolerance(-1.0, 1.0)
    if suite.action_kind != "Box":
        fixed = 0.0  # discrete actions are compared exactly
    return lambda obs: np.broadcast_to(fixed, (len(obs), artifact.act_dim or 1))
