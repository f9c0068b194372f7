"""The pytest plugin of the conformance suite: its options, hooks and session fixtures. The
policies under test (found from the options) and the run are in session.py, what the run found
in record.py, its renderings in report.py (terminal, JUnit, JSON) and html.py; process tuning in
tuning.py.

Loaded by the repository's conftest.py, or by its entry point once installed. The models are
opened (safely) while pytest configures, so that a bad --model or --onnx is a usage error before
any test runs. With several models each is its own parametrized set of clause tests; its export
is done once per model (and once per worker under pytest-xdist).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from . import __version__, engines, spec
from .artifact import Artifact, sha256
from .check import VERDICTS, suite_limitation
from .metadata import TRANSFORMS
from .observations import IMAGE_LAYOUTS
from .report import (coverage_properties, normalization_line, runtime_properties,
                     terminal_summary, write_json)
from .session import Policy, Run, command_for, policies_from
from .shards import Shard
from .tolerance import RULE, tolerance
from .tuning import (_keep_hypothesis_storage_out_of_the_project,
                     _seed_hypothesis_while_the_heap_is_small, _share_the_cores,
                     _skip_pytests_last_collection, _skip_the_last_collections_at_exit,
                     _torch_threads_wait_passively)

# No example database: a run writes nothing into the user's folder (failures are saved as
# counterexample files and reproduction blobs instead).
settings.register_profile("quick", max_examples=20, deadline=None, database=None)
settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          database=None, print_blob=True)
DEFAULT_PROFILE = "ci" if os.environ.get("CI") else "quick"
settings.load_profile(DEFAULT_PROFILE)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("policy-onnx", "policy-onnx conformance (POLICY_ONNX_SPEC "
                            f"{spec.SPEC_VERSION})")
    group.addoption(
        "--model", metavar="ZIP", action="append",
        help="SB3 model .zip to check, or a folder: every agent in it and its subfolders (an "
             "RL Zoo tree ALGO/ENV_N/ENV.zip, Hub repositories; a Zoo run's best_model.zip and "
             "checkpoints only when given as files). Repeat it to gate several models in one "
             "run, each its own set of clause tests. Without --onnx the suite exports each "
             "model once with its own exporter and checks that artifact. Default: none.")
    group.addoption(
        "--onnx", metavar="FILE", action="append",
        help="ONNX artifact exported elsewhere to check. With --model it is checked against that "
             "model (repeat it once per --model, in the same order, or give a folder holding "
             "<model name>.onnx for each model, e.g. ppo/CartPole-v1_1.onnx for a Zoo run); "
             "alone, the clauses that need the model are "
             "skipped. Default: none.")
    group.addoption(
        "--action-transform", choices=TRANSFORMS, default="none",
        help="artifact style of the suite's own export: 'none' bakes predict()'s post-processing "
             "into the graph; 'clip' (unsquashed policies) and 'tanh' (squash_output) leave it to "
             "the runtime. Ignored with --onnx. Default: none.")
    group.addoption(
        "--image-layout", choices=IMAGE_LAYOUTS, default=IMAGE_LAYOUTS[0],
        help="the layout the suite's own export takes images in: HWC (height, width, channels: "
             "what environments usually return; SB3 saved the model's images transposed to "
             "CHW) or CHW (for environments that return channels first). Ignored with --onnx: "
             "the artifact's observation_space says. Default: HWC.")
    group.addoption(
        "--level", choices=[level.name.lower() for level in spec.Level], default="standard",
        help="conformance level every policy must reach: exit status 0 only when it is met (a "
             "Basic run does not fail on a Standard-only clause). Default: standard.")
    group.addoption(
        "--report", metavar="JSON",
        help="write the per-clause verdicts, the level reached, the model's and artifact's "
             "SHA-256, the settings and the parity statistics of every policy to this JSON "
             "file. Default: none.")
    group.addoption(
        "--html", metavar="PATH",
        help="write the run as one self-contained HTML page (no network access when opened): "
             "the verdicts, each parity clause's margin and ratio histogram, what was drawn, "
             "the decision coverage and the counterexample of a failure. Needs matplotlib: "
             "pip install policy-onnx[report]. Default: none.")
    group.addoption(
        "--runtime", metavar="NAMES", default="",
        help="also run the artifact in these engines, comma-separated (tract, openvino): PORT-04 "
             "says per engine whether it loads and matches predict(), does not load, or loads "
             "and differs. Needs the engines: pip install policy-onnx[runtimes]. Default: none.")
    group.addoption(
        "--shard", metavar="K/N",
        help="check only the K-th of N parts of the policies named, for a zoo spread over N "
             "machines: whole policies, dealt by name (sorted, in turn), the same way for the "
             "same files. Give each shard --report; policy-onnx merge makes one verdict of "
             "the N reports. Default: every policy.")
    group.addoption(
        "--vecnormalize", metavar="PKL", action="append",
        help="the VecNormalize statistics (a .pkl) the model was trained behind: the artifact "
             "must take raw observations and act like predict() of the normalized ones. "
             "Without this option they are found beside each model, in the RL Zoo's layout "
             "(<dir>/<name>/vecnormalize.pkl for <dir>/<name>.zip) or a Hub repository's "
             "(vec_normalize.pkl beside the zip). 'none' checks without normalization. With "
             "several models, repeat it once per --model, in the same order. Default: found "
             "by layout.")
    group.addoption(
        "--trust-model-code", action="store_true", default=False,
        help="let Stable-Baselines3 unpickle everything in --model, running any code the file "
             "holds. Only for models you trust that need custom classes. Default: off (only "
             "allow-listed classes are unpickled).")


RUN = pytest.StashKey[Run]()
RUNTIMES = pytest.StashKey[list]()  # --runtime: the engines PORT-04 runs
PAGE = pytest.StashKey["PageWriter"]()  # --html: writes the page when the run ends
BY_POLICY = pytest.StashKey[bool]()  # pytest-xdist: one worker per policy


def _suite_command(config: pytest.Config, items: list[pytest.Item]) -> tuple[str, ...]:
    """pytest and the clause tests as this run named them: the package with --pyargs, else
    their folder (relative to where pytest started, when inside it)."""
    command = command_for("pytest", "pytest")
    if config.getoption("pyargs"):
        return (*command, "--pyargs", "policy_onnx.conformance")
    folder = next((item.path.parent for item in items if item.get_closest_marker("clause")),
                  None)
    if folder is None:
        return (*command, "--pyargs", "policy_onnx.conformance")
    start = config.invocation_params.dir
    return (*command, str(folder.relative_to(start) if folder.is_relative_to(start) else folder))


@pytest.hookimpl(wrapper=True)  # around pytest-xdist's, which turns "no" into "load"
def pytest_cmdline_main(config: pytest.Config):
    """With -n and no --dist, each policy's tests go to one worker (pytest_xdist_make_scheduler),
    so that a zoo of N models costs about N / workers exports instead of every worker exporting
    and preparing every model."""
    workers = getattr(config.option, "numprocesses", None)
    checking = bool(config.getoption("model") or config.getoption("onnx"))
    config.stash[BY_POLICY] = bool(workers) and config.option.dist == "no" and checking
    return (yield)


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if not config.stash.get(BY_POLICY, False):
        return None
    from .scheduling import LoadPolicyScheduling

    return LoadPolicyScheduling(config, log, [p.key for p in config.stash[RUN].policies])


@pytest.hookimpl(tryfirst=True)  # before hypothesis's plugin loads the profile
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "clause(id): the POLICY_ONNX_SPEC clause the test checks")
    if config.getoption("model") or config.getoption("onnx"):
        _keep_hypothesis_storage_out_of_the_project()
        _seed_hypothesis_while_the_heap_is_small()
        _skip_the_last_collections_at_exit()
        _skip_pytests_last_collection(config)
        _torch_threads_wait_passively()
    profile = config.getoption("hypothesis_profile", None)
    if profile:
        try:
            settings.get_profile(profile)
        except Exception:
            raise pytest.UsageError(
                f"--hypothesis-profile {profile}: no such profile; the suite registers 'quick' "
                "(the local default) and 'ci' (derandomized, the default when CI is set)"
            ) from None
    if config.getoption("html"):
        from .html import INSTALL_HINT, available

        if not available():
            raise pytest.UsageError(f"--html needs matplotlib, which is not installed: "
                                    f"{INSTALL_HINT}")
    config.stash[RUNTIMES] = _runtimes(config.getoption("runtime"))
    shard = _shard(config.getoption("shard"))
    policies, passed_over, named = policies_from(config, shard)
    if config.getoption("html") and not _worker(config):
        from .html import PageWriter

        config.stash[PAGE] = PageWriter()
        config.pluginmanager.register(config.stash[PAGE], "policy-onnx-page")
    if _worker(config):
        _share_the_cores(min(config.workerinput["workercount"], len(policies)))
    report = config.getoption("report")
    run = Run(policies, spec.Level[config.getoption("level").upper()],
              Path(report).expanduser() if report else None,
              lambda line: _announce(config, line), passed_over)
    run.shard = shard.describe(named, _shard_options(config)) if shard else None
    config.stash[RUN] = run
    config.pluginmanager.register(run, "policy-onnx-run")


def _shard_options(config: pytest.Config) -> dict:
    """The options that change a policy's verdict, which every shard of a run must share."""
    return {name: config.getoption(name) for name in (
        "action_transform", "image_layout", "vecnormalize", "trust_model_code", "runtime",
        "keyword", "markexpr")}


def _shard(option: str | None) -> Shard | None:
    try:
        return Shard.parse(option) if option else None
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _runtimes(option: str) -> list[str]:
    """The engines --runtime names, each known and installed, or a usage error saying which
    is not."""
    names = [name.strip().lower() for name in option.split(",") if name.strip()]
    unknown = [name for name in names if name not in engines.RUNTIMES]
    if unknown:
        raise pytest.UsageError(f"--runtime {option}: unknown runtime {unknown[0]!r}; the suite "
                                f"runs {', '.join(engines.RUNTIMES)}")
    missing = [name for name in names if not engines.available(name)]
    if missing:
        raise pytest.UsageError(f"--runtime {option}: {', '.join(missing)} is not installed: "
                                f"{engines.RUNTIMES_HINT}")
    return list(dict.fromkeys(names))


@pytest.fixture(scope="session")
def runtimes(request) -> list[str]:
    """The engines --runtime names (PORT-04)."""
    return request.config.stash[RUNTIMES]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Several policies: every clause test once per policy, the policy's name first in its id."""
    run = metafunc.config.stash[RUN]
    if "policy" in metafunc.fixturenames and len(run.policies) > 1 and run.openable:
        metafunc.parametrize("policy", run.openable, ids=[p.key for p in run.openable],
                             indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The PORT clauses run again what the parity clauses compared: after them.
    items.sort(key=lambda item: item.get_closest_marker("clause") is not None
               and spec.clause(item.get_closest_marker("clause").args[0]).portability)
    run = config.stash[RUN]
    run.suite_command = _suite_command(config, items)
    if (run.policies or run.shard) and not run.openable:  # none opens, or none dealt
        config.hook.pytest_deselected(items=list(items))
        items.clear()
    if run.policies or run.shard:
        return
    if any(item.get_closest_marker("clause") for item in items):
        raise pytest.UsageError(
            "nothing to check: give --model m.zip (the suite exports it), --onnx a.onnx, "
            f"or both (e.g. {shlex.join(run.suite_command)} --model m.zip)")


def _policy_of(item: pytest.Item) -> Policy:
    callspec = getattr(item, "callspec", None)
    if callspec is not None and "policy" in callspec.params:
        return callspec.params["policy"]
    return item.config.stash[RUN].openable[0]


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("clause")
    if marker is None:
        return
    clause = spec.clause(marker.args[0])
    policy = _policy_of(item)
    policy.ensure_open()
    # The reports carry these, to the JSON report, to the pytest-xdist controller and, as
    # testcase properties, to JUnit XML (pytest.ini sets junit_family = xunit1, the family whose
    # schema has them).
    item.user_properties += [("clause", clause.id), ("level", clause.level.label),
                             ("policy", policy.key)]
    if policy.open_failure:  # a model of a zoo that could not be opened where its tests run
        item.user_properties.append(("open_failure", policy.open_failure))
        pytest.skip(f"NOT CHECKED: {policy.open_failure}")
    if clause.needs_model and not policy.loaded:
        pytest.skip(f"{clause.id} compares the artifact with the trained model: "
                    "it needs --model m.zip")
    if not clause.applies(policy.action_kind, policy.structure):
        scope = f"{', '.join(clause.kinds)} action spaces"
        if clause.structures != spec.STRUCTURES:
            scope += f" of {', '.join(clause.structures)} policies"
        pytest.skip(f"{clause.id} not applicable: it concerns {scope}; this is a "
                    f"{policy.structure} {policy.action_kind} policy")
    if clause.observations and not clause.applies(policy.action_kind, policy.structure,
                                                  policy.observation_features):
        pytest.skip(f"{clause.id} not applicable: it concerns "
                    f"{' or '.join(clause.observations)} observations; this policy's "
                    "observation is a vector")
    normalization = policy.normalization
    if clause.needs_normalization and not (normalization and normalization.norm_obs):
        why = (f"{normalization.path} has norm_obs false" if normalization else
               "no VecNormalize statistics were given or found beside the model")
        pytest.skip(f"{clause.id} not applicable: it concerns models trained under observation "
                    f"normalization; {why}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Where the test ran, the report gets what it exercised (the parity statistics) and the
    path of the suite's own export, so that the verdicts can be gathered from reports alone
    (the pytest-xdist controller sees nothing else)."""
    report = yield
    marker = item.get_closest_marker("clause")
    if marker is not None and call.excinfo is not None and \
            not call.excinfo.errisinstance(VERDICTS):
        report.longrepr = suite_limitation(spec.clause(marker.args[0]), call.excinfo)
        report.user_properties.append(("suite_error", True))
    if marker is not None and report.when == "call":
        policy = _policy_of(item)
        found = policy.stats.for_clause(marker.args[0])
        if policy.exported_path:
            found.append(("exported_artifact", str(policy.exported_path)))
        if policy.coverage is not None and not policy.coverage_reported:
            found += coverage_properties(policy.coverage.summary())
            policy.coverage_reported = True
        if _worker(item.config) and policy.loaded and not policy.facts_reported:
            found.append(("policy_facts", policy.current_facts()))  # for a controller that
            policy.facts_reported = True  # never opened it
        report.user_properties += found
        # JUnit XML takes the properties of the teardown report: the flat ones (records such as
        # the policy's facts go to the controller only).
        item.user_properties += [(k, v) for k, v in found if not isinstance(v, dict)]
        item.user_properties += [property for name, verdicts in found if name == "runtimes"
                                 for property in runtime_properties(verdicts)]
    return report


def _worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its controller sums up the run and writes the report."""
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN]
    lines = [f"policy-onnx {__version__}: POLICY_ONNX_SPEC {spec.SPEC_VERSION}, "
             f"hypothesis profile {settings.get_current_profile_name()!r}",
             f"parity tolerance: {RULE}"]
    if config.stash[RUNTIMES]:
        lines.append("runtimes (PORT-04): "
                     + ", ".join(engines.label(r) for r in config.stash[RUNTIMES]))
    if run.passed_over:
        lines.append(f"passed over: {len(run.passed_over)} best model(s) and checkpoint(s) of RL "
                     "Zoo runs, checked only when given as files (e.g. "
                     f"{run.passed_over[0]})")
    if run.shard:
        lines.append(f"shard {run.shard['index']}/{run.shard['total']}: "
                     f"{len(run.policies)} of the {len(run.shard['policies'])} policies named"
                     + ("" if run.policies else "; none dealt to this shard, nothing to run"))
    if len(run.policies) > 1:
        lines.append(f"{len(run.policies)} policies, each its own set of clause tests:")
    for policy in run.policies:
        lines += [("" if len(run.policies) == 1 else f"{policy.key}: ") + line
                  for line in _header_lines(policy)]
    return lines


def _header_lines(policy: Policy) -> list[str]:
    if policy.open_failure:
        return [f"NOT CHECKED: {policy.open_failure}"]
    lines = []
    if policy.deferred:
        lines.append(f"model: {policy.model_path} (sha256 {policy.model_sha256}; opened where "
                     "its tests run)")
        statistics = policy.statistics_path
        if statistics is not None:
            lines.append(f"observation normalization: {statistics} (sha256 {sha256(statistics)};"
                         " read where its tests run)")
    if policy.loaded:
        lines.append(f"model: {policy.model_path} ({policy.loaded.algorithm}, "
                     f"sha256 {policy.model_sha256})")
    line = normalization_line(policy.normalization_facts, policy.vecnormalize)
    if line and not policy.deferred:
        lines.append(line)
    if policy.onnx_path:
        lines.append(f"artifact: {policy.onnx_path} (sha256 {policy.given_artifact.sha256})")
    else:
        lines.append(f"artifact: exported from the model by policy-onnx at session start "
                     f"(action_transform={policy.transform})")
    return lines


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The run's record is made; the exit status follows the requested level; the JSON report
    is written."""
    run = session.config.stash.get(RUN, None)
    if run is None or _worker(session.config) or not (run.judged or run.shard):
        return
    ran = exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                         pytest.ExitCode.NO_TESTS_COLLECTED)
    if run.shard and not ran:
        return  # interrupted, or a usage error: no report, so that the merge finds it missing
    record = run.finish({"suite_version": __version__, "spec_version": spec.SPEC_VERSION,
                         "hypothesis_profile": settings.get_current_profile_name(),
                         "tolerance": RULE})
    if ran:
        session.exitstatus = pytest.ExitCode.OK if record.level_met \
            else pytest.ExitCode.TESTS_FAILED
    if run.report_path:
        write_json(run.report_path, record.document())
    page = session.config.stash.get(PAGE, None)
    if page is not None:
        page.write(Path(session.config.getoption("html")).expanduser(), record)


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None or run.record is None:
        return
    terminalreporter.section("policy-onnx")
    # A model zoo (or -q): a row per clause for every model would bury the ones that matter.
    verbosity = config.get_verbosity()
    problems_only = verbosity < 0 or (len(run.policies) > 1 and verbosity < 1)
    terminal_summary(run.record, terminalreporter.write_line,
                     lambda title: terminalreporter.write_sep("-", title), problems_only,
                     run.report_path, config.getoption("html"))
    failed = len(terminalreporter.stats.get("failed", []))
    if failed and run.record.level_met:
        terminalreporter.write_line(
            f"exit status 0: every policy meets the requested level "
            f"{run.requested_level.label}; the {failed} failing clause test(s) are above it")


def _announce(config: pytest.Config, line: str) -> None:
    """A line on the terminal now, from inside a test's capture (long runs: the export)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            if reporter._tw.width_of_current_line:  # amid pytest-xdist's progress dots
                reporter.write("\n")
            reporter.write_line(line)


# --- session fixtures: one value per policy ------------------------------------------------------
@pytest.fixture(scope="session")
def policy(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Policy:
    """The policy under test (with several, the test is parametrized over them)."""
    run = request.config.stash[RUN]
    chosen = getattr(request, "param", None) or run.openable[0]
    beside = run.report_path.parent if run.report_path else tmp_path_factory.getbasetemp()
    chosen.counterexample_dir = beside / "counterexamples" / chosen.key
    chosen.suite_command = run.suite_command
    return chosen


@pytest.fixture(scope="session")
def reference(policy: Policy):
    """The trained model as the oracle (clauses that need it are skipped without --model)."""
    if policy.reference is None:
        pytest.skip("needs --model m.zip")
    return policy.reference


@pytest.fixture(scope="session")
def artifact(policy: Policy, tmp_path_factory: pytest.TempPathFactory,
             pytestconfig: pytest.Config) -> Artifact:
    """The artifact under test: --onnx, or the suite's own export of --model (once)."""
    return policy.artifact(tmp_path_factory.mktemp("export"), pytestconfig.stash[RUN].announce)


@pytest.fixture(scope="session")
def domain(policy: Policy, artifact: Artifact):
    """Where the suite draws observations: the model's observation space with --model, else
    the observation space the artifact declares (image and dict policies), else unbounded
    rows of the artifact's obs_dim."""
    from .metadata import observation_size
    from .observations import declared_layout
    from .strategies import ObservationDomain

    if policy.reference is not None:
        return policy.reference.domain
    if artifact.obs_dim is None:
        pytest.fail("cannot make observations: obs has no static obs_dim (see GRAPH-07)",
                    pytrace=False)
    declared = artifact.declared_observation()
    if declared is not None and observation_size(declared) == artifact.obs_dim:
        return ObservationDomain.of_layout(declared_layout(declared))
    return ObservationDomain.unbounded(artifact.obs_dim)


@pytest.fixture(scope="session")
def decisions(policy: Policy, artifact: Artifact, domain):
    """The decision coverage of the artifact's graph (decisions.py), made once per policy:
    the rows and batch sizes its search found are checked by the clauses."""
    return policy.cover(artifact, domain)


@pytest.fixture(scope="session")
def probe_observations(domain, decisions):
    """A fixed mix of observations for the behaviour clauses, the rows the decision search
    found among the first."""
    return domain.probe(extra=decisions.found)


@pytest.fixture(scope="session")
def clip_seeds(policy: Policy, reference):
    """Observations whose pre-clip mean leaves the action bounds (empty if none was found)."""
    return policy.clip_seeds


@pytest.fixture(scope="session")
def action_seeds(policy: Policy, reference):
    """Observations where predict() makes each of its discrete choices (as far as found)."""
    return policy.action_seeds


@pytest.fixture(scope="session")
def action_tolerance(policy: Policy, artifact: Artifact):
    """obs -> per-element tolerance for comparing actions: the parity rule with --model; without
    it, the rule's fixed part in the declared action units (no oracle to measure noise)."""
    if policy.reference is not None:
        return policy.reference.tolerance
    box = artifact.declared_box()
    fixed = tolerance(box.low, box.high) if box else tolerance(-1.0, 1.0)
    if policy.action_kind != "Box":
        fixed = 0.0  # discrete actions are compared exactly
    return lambda obs: np.broadcast_to(fixed, (len(obs), artifact.act_dim or 1))
