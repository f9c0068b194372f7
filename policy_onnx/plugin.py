"""The pytest plugin of the conformance suite: options, the policies under test, session
fixtures, report header, summary and JSON report.

Loaded by the repository's conftest.py, or by its entry point once installed. The models are
opened (safely) while pytest configures, so that a bad --model or --onnx is a usage error before
any test runs. With several models each is its own parametrized set of clause tests; its export
is done once per model (and once per worker under pytest-xdist).
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

from . import __version__, spec
from .artifact import Artifact, ArtifactError, sha256
from .check import VERDICTS, suite_limitation
from .layouts import Found, find_models, find_statistics, unique_names
from .load import LoadedModel, ModelLoadError, load_model
from .metadata import TRANSFORMS
from .observations import IMAGE_LAYOUTS
from .parity import ParityStats

from .report import (Verdicts, all_met, coverage_properties, normalization_line, policies_line,
                     report_document, write_json)
from .tolerance import RULE, tolerance

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


@dataclass(eq=False)
class Policy:
    """One policy under test: a model and its artifact (given with --onnx, or exported here),
    or an artifact alone."""
    key: str  # its name in test ids, the summary, the report and the counterexample folder
    model_path: Path | None
    onnx_path: Path | None
    transform: str
    loaded: LoadedModel | None
    given_artifact: Artifact | None  # the --onnx artifact
    trust_code: bool = False
    vecnormalize: str | None = None  # --vecnormalize as given for this model (None: by layout)
    open_failure: str | None = None  # why the model or artifact cannot be opened (then unchecked)
    image_layout: str = "HWC"  # --image-layout, for the suite's own export
    # A model of a zoo is opened where its tests run (each pytest-xdist worker opens only its
    # own): until then `loaded` is None, and the controller learns what it needs from the
    # reports (`facts`).
    deferred: bool = False
    facts: dict = field(default_factory=dict)
    facts_reported: bool = False  # a pytest-xdist worker tells its controller once
    stats: ParityStats = field(default_factory=ParityStats)  # filled where the tests run
    coverage: object = None  # decisions.Coverage of the artifact, where the tests run
    coverage_reported: bool = False  # its summary went with a clause's report
    verdicts: Verdicts = field(default_factory=Verdicts)  # filled from the test reports
    exported_path: Path | None = None
    export_failure: str | None = None
    counterexample_dir: Path | None = None  # set by the `policy` fixture
    suite_command: tuple[str, ...] = ("pytest", "--pyargs", "policy_onnx.conformance")

    def ensure_open(self) -> None:
        """Open a deferred model (and check the transform fits it), once; a failure is kept
        in `open_failure`."""
        if not self.deferred:
            return
        self.deferred = False
        try:  # its artifact (if given) was opened with the run
            self.loaded = _loaded(self.model_path, self.given_artifact, self.vecnormalize,
                                  self.transform, self.trust_code, self.image_layout)
        except (ModelLoadError, ValueError) as exc:
            self.open_failure = str(exc)

    def current_facts(self) -> dict:
        """What the pytest-xdist controller needs to sum up a policy it never opened."""
        return {"algorithm": self.loaded.algorithm if self.loaded else None,
                "action_kind": self.action_kind, "structure": self.structure,
                "normalization": self.normalization_facts}

    @property
    def normalization(self):
        return self.loaded.normalization if self.loaded else None

    @property
    def normalization_facts(self) -> dict | None:
        """The statistics the model was checked with, as the report describes them (from a
        pytest-xdist worker's facts when this process never opened the model)."""
        normalization = self.normalization
        return normalization.describe() if normalization else self.facts.get("normalization")

    @property
    def statistics_path(self) -> Path | None:
        """The statistics file given or found by layout (unread): what a header names before
        the model is opened."""
        if self.vecnormalize == "none" or self.model_path is None:
            return None
        return Path(self.vecnormalize) if self.vecnormalize else find_statistics(self.model_path)

    @property
    def action_kind(self) -> str:
        """The model's action space type, or else the one the artifact declares."""
        if self.loaded:
            return type(self.loaded.sb3.action_space).__name__
        if "action_kind" in self.facts:
            return self.facts["action_kind"]
        return self.given_artifact.declared_kind if self.given_artifact else "Box"

    @property
    def observation_features(self) -> frozenset[str]:
        """"image", "dict": what the observation holds beyond a vector (the model's, else the
        artifact's declared observation space)."""
        if self.loaded:
            return self.loaded.layout.features
        return self.given_artifact.observation_features if self.given_artifact else frozenset()

    @property
    def structure(self) -> str:
        """plain, masked (action masks) or recurrent: the model's, else the artifact's."""
        if self.loaded:
            return self.loaded.structure
        if "structure" in self.facts:
            return self.facts["structure"]
        return self.given_artifact.structure if self.given_artifact else "plain"

    @cached_property
    def reference(self):
        from .model import Reference

        return Reference(self.loaded) if self.loaded else None

    @cached_property
    def clip_seeds(self):
        return self.reference.find_out_of_bounds()

    def cover(self, artifact: Artifact, domain):
        """The decision coverage of `artifact` (made once; decisions.cover), starting from the
        searches' seeds too, with a model."""
        if self.coverage is None:
            from .decisions import cover

            seeds = [self.clip_seeds, self.action_seeds] if self.reference is not None else []
            self.coverage = cover(artifact, domain, seeds)
        return self.coverage

    @cached_property
    def action_seeds(self):
        return self.reference.find_each_action()

    def artifact(self, workdir: Path, announce) -> Artifact:
        """The --onnx artifact, or the suite's own export of the model, made once."""
        if self.given_artifact:
            return self.given_artifact
        if self.exported_path is None and self.export_failure is None:
            from .export import export

            target = workdir / f"{self.model_path.stem}.onnx"
            started = time.perf_counter()
            try:
                self.exported_path = export(self.loaded, target, transform=self.transform)
            except Exception as exc:  # the exporter's own failure: a verdict, not a traceback
                self.export_failure = (f"the exporter failed on {self.model_path}: "
                                       f"{type(exc).__name__}: {exc}")
            else:
                announce(f"policy-onnx: exported {self.model_path} to {target} in "
                         f"{time.perf_counter() - started:.1f} s")
        if self.export_failure:
            pytest.fail(self.export_failure, pytrace=False)
        return Artifact(self.exported_path)

    @property
    def artifact_path(self) -> Path | None:
        return self.onnx_path or self.exported_path

    @cached_property
    def model_sha256(self) -> str:
        return sha256(self.model_path)

    @cached_property
    def artifact_sha256(self) -> str | None:
        """Read when the run is summed up, once the suite's own export (if any) exists."""
        if self.given_artifact:
            return self.given_artifact.sha256
        path = self.artifact_path
        return sha256(path) if path and path.is_file() else None

    def save_counterexample(self, clause_id: str, arrays: dict) -> Path:
        """The failing input of a parity clause (observations, and masks or episode starts), as
        a file `policy-onnx replay` reads."""
        path = self.counterexample_dir / f"{clause_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        normalization = self.normalization
        path.write_text(json.dumps({
            "clause": clause_id, "model": str(self.model_path.resolve()),
            "artifact": str(self.artifact_path.resolve()), "trust_model_code": self.trust_code,
            "vecnormalize": str(normalization.path.resolve()) if normalization else "none",
            **{name: array.tolist() if isinstance(array, np.ndarray) else array
               for name, array in arrays.items()}}))
        return path

    def reproduce(self, clause_id: str) -> str:
        """The command that runs this clause on this policy alone, with the same draws."""
        words = list(self.suite_command)
        if self.model_path:
            words += ["--model", str(self.model_path)]
        if self.onnx_path:
            words += ["--onnx", str(self.onnx_path)]
        elif self.transform != "none":
            words += ["--action-transform", self.transform]
        if self.trust_code:
            words.append("--trust-model-code")
        if self.vecnormalize:
            words += ["--vecnormalize", self.vecnormalize]
        words += ["-k", clause_id, "--hypothesis-profile", settings.get_current_profile_name()]
        return shlex.join(words)

    def replay(self, counterexample: Path) -> str:
        """The command that replays a saved counterexample, runnable where it is printed."""
        return shlex.join([*command_for("policy-onnx", "policy_onnx"), "replay",
                           str(counterexample)])

    def describe(self) -> dict:
        """The model and the artifact, as the JSON report names them: the same fields for
        every policy, whether its model could be opened or not (then `open_failure` says why,
        and what only the opened model tells is null)."""
        artifact = self.artifact_path
        readable = self.model_path is not None and self.model_path.is_file()
        opened = not self.open_failure
        return {
            "name": self.key,
            "model": {"path": str(self.model_path),
                      "sha256": self.model_sha256 if readable else None,
                      "algorithm": self.loaded.algorithm if self.loaded
                      else self.facts.get("algorithm")} if self.model_path else None,
            "normalization": self.normalization_facts,
            "artifact": {"path": str(artifact), "sha256": self.artifact_sha256,
                         "exported_by_suite": self.onnx_path is None} if artifact else None,
            "action_space": self.action_kind if opened else None,
            "structure": self.structure if opened else None,
            "open_failure": self.open_failure,
        }


@dataclass(eq=False)  # hashable by identity: pluggy keeps its plugins in sets
class Run:
    """What this pytest run checks and how: its policies, the level and the report. Registered
    as a plugin of the run, it gathers the verdicts from the test reports."""
    policies: list[Policy]
    requested_level: spec.Level
    report_path: Path | None
    announce: Callable[[str], None]  # a line on the terminal, now
    # Best models and checkpoints of RL Zoo runs in the folders given (not checked: layouts.py).
    passed_over: list[Path] = field(default_factory=list)
    # How this run's clause tests are run again from where it started (set at collection).
    suite_command: tuple[str, ...] = ("pytest", "--pyargs", "policy_onnx.conformance")

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Called in the process that runs the tests, and in the pytest-xdist controller for
        the reports of its workers."""
        properties = dict(report.user_properties)
        if "policy" not in properties:
            return
        policy = next(p for p in self.policies if p.key == properties["policy"])
        policy.verdicts.record(report)
        if "policy_facts" in properties and policy.loaded is None:
            policy.facts = properties["policy_facts"]
        if "open_failure" in properties:  # a worker could not open it
            policy.open_failure = properties["open_failure"]
        if "exported_artifact" in properties and policy.exported_path is None:
            # The pytest-xdist controller: a worker exported this model.
            policy.exported_path = Path(properties["exported_artifact"])
            worker = getattr(report, "worker_id", "a worker")
            self.announce(f"policy-onnx: {policy.key} exported by {worker}: "
                          f"{policy.exported_path}")

    @property
    def openable(self) -> list[Policy]:
        """The policies whose model and artifact could be opened: they get clause tests."""
        return [p for p in self.policies if not p.open_failure]

    @property
    def unopened(self) -> list[Policy]:
        return [p for p in self.policies if p.open_failure]

    @property
    def checked(self) -> list[Policy]:
        """The policies that have verdicts (a run deselecting all of a policy's tests has none)."""
        return [p for p in self.openable if p.verdicts.by_clause]

    @property
    def judged(self) -> list[Policy]:
        """What the verdict of the run is about: the policies checked and those that could not
        be opened (each a failing verdict)."""
        return [p for p in self.policies if p.open_failure or p.verdicts.by_clause]

    @property
    def level_met(self) -> bool:
        return not self.unopened and all_met(self.checked, self.requested_level)


RUN = pytest.StashKey[Run]()
BY_POLICY = pytest.StashKey[bool]()  # pytest-xdist: one worker per policy


def command_for(tool: str, module: str) -> list[str]:
    """How a shell where the suite runs starts `tool` of this installation: by name when the
    PATH finds this installation's, else by its full path, else as `python -m module`."""
    installed = Path(sys.executable).parent / tool
    if not installed.exists():
        return [sys.executable, "-m", module]
    found = shutil.which(tool)
    if found and Path(found).resolve() == installed.resolve():
        return [tool]
    return [str(installed)]


def _keep_hypothesis_storage_out_of_the_project() -> None:
    """Hypothesis caches what it reads of the loaded modules in `.hypothesis/` of the working
    folder: the user's project. Unless told otherwise, keep it in the user's cache instead."""
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = str(cache / "policy-onnx" / "hypothesis")


def _seed_hypothesis_while_the_heap_is_small() -> None:
    """Hypothesis registers its own PRNG at its first test, and checks the registration with a
    full gc.collect(): after torch and its exporter are loaded that takes about 0.3 s (a
    twentieth of a check). Registered here, before the models are opened, it takes
    milliseconds."""
    try:
        from hypothesis.internal.entropy import deterministic_PRNG
    except ImportError:  # another hypothesis than the pinned one: skip the shortcut
        return
    with deterministic_PRNG():
        pass


def _skip_the_last_collections_at_exit() -> None:
    """At exit the interpreter's last full collections walk the whole heap of torch, SB3 and
    the dynamo exporter (about a second, a sixth of a run) to free memory the finished process
    gives back anyway. Frozen at exit, they are skipped; atexit handlers still run and the
    standard streams are still flushed. Only at exit: a caller running pytest in-process keeps a
    collector that collects."""
    atexit.unregister(gc.freeze)  # once, however many sessions a process runs
    atexit.register(gc.freeze)


def _share_the_cores(busy_workers: int) -> None:
    """pytest-xdist starts a worker per core: torch and ONNX Runtime each using every core in
    every worker made a zoo slower in parallel than serially. Each worker that has a policy to
    check gets its share of the cores (all of them when there is one policy: one worker works)."""
    import torch

    from . import artifact

    threads = max(1, (os.cpu_count() or 1) // max(busy_workers, 1))
    torch.set_num_threads(threads)
    artifact.SESSION_THREADS = threads


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


def _paths(values: list[str] | None) -> list[Path]:
    return [Path(v).expanduser() for v in values or []]


def _onnx_in_folders(paths: list[Path]) -> list[Path]:
    """--onnx alone: each folder replaced by the artifacts in it, sorted."""
    expanded = []
    for path in paths:
        found = sorted(path.glob("*.onnx")) if path.is_dir() else [path]
        if not found:
            raise pytest.UsageError(f"--onnx {path}: the folder holds no *.onnx file; give a "
                                    "folder of artifacts or the files themselves")
        expanded.extend(found)
    return expanded


def _models(config: pytest.Config) -> Found:
    """The models of --model: files as given, folders searched through (layouts.find_models)."""
    given = _paths(config.getoption("model"))
    found = find_models(given)
    for folder in (p for p in given if p.is_dir()):
        if not any(m.is_relative_to(folder) for m in found.models):
            extras = [m for m in found.passed_over if m.is_relative_to(folder)]
            raise pytest.UsageError(
                f"--model {folder}: the folder holds no model .zip (its subfolders searched "
                "through" + (f"; {len(extras)} best model(s) and checkpoint(s) of RL Zoo runs "
                             "are checked only when given as files" if extras else "")
                + "); give a folder of models or the files themselves")
    return found


def _pairs(config: pytest.Config, models: list[Path]) -> list[tuple[Path | None, Path | None]]:
    """(model, artifact) per policy, from the --model and --onnx options."""
    onnx_given = _paths(config.getoption("onnx"))
    if not models:
        return [(None, path) for path in _onnx_in_folders(onnx_given)]
    if not onnx_given:
        return [(model, None) for model in models]
    if len(onnx_given) == 1 and onnx_given[0].is_dir():
        folder = onnx_given[0]
        artifacts = [folder / f"{name}.onnx" for name in unique_names(models)]
        missing = [str(a) for a in artifacts if not a.is_file()]
        if missing:
            raise pytest.UsageError(f"--onnx {folder}: no artifact for "
                                    f"{len(missing)} model(s): {', '.join(missing[:3])}; the "
                                    "folder must hold <model name>.onnx for every model")
        return list(zip(models, artifacts))
    if len(onnx_given) != len(models):
        raise pytest.UsageError(
            f"{len(models)} model(s) but {len(onnx_given)} --onnx artifact(s): give --onnx once "
            "per --model, in the same order, or a folder holding <model name>.onnx for each")
    return list(zip(models, onnx_given))


def _statistics(config: pytest.Config, pairs) -> list[str | None]:
    """--vecnormalize per policy: a file, "none", or None (found by layout)."""
    given = config.getoption("vecnormalize") or []
    if given and not any(model for model, _ in pairs):
        raise pytest.UsageError("--vecnormalize needs --model: the statistics are checked "
                                "against the model's predict()")
    if not given:
        return [None] * len(pairs)
    if given == ["none"]:
        return ["none"] * len(pairs)
    if len(given) != len(pairs):
        raise pytest.UsageError(
            f"{len(pairs)} model(s) but {len(given)} --vecnormalize value(s): give it once per "
            "--model, in the same order ('none' for a model without), or leave it out to find "
            "the statistics beside each model")
    return given


def _loaded(model_path: Path | None, given_artifact: Artifact | None, vecnormalize: str | None,
            transform: str, trust_code: bool, image_layout: str) -> LoadedModel | None:
    """The model of a policy, opened (safely) to be checked against `given_artifact` (or its
    own export); ModelLoadError or ValueError (a transform that does not fit) when it cannot
    be."""
    from .normalization import attach

    loaded = load_model(model_path, trust_code=trust_code) if model_path else None
    if loaded:
        loaded.image_layout = image_layout
        if given_artifact:
            given_artifact.adopt_layout(loaded)
        attach(loaded, vecnormalize)
    if loaded and not given_artifact:
        from .heads import head_for

        try:
            head_for(loaded, transform)
        except ValueError as exc:
            raise ValueError(f"--action-transform {transform}: {exc}") from None
    return loaded


def _deferred(key: str, model_path: Path, onnx_path: Path | None, **options) -> Policy:
    """A model of a zoo: its files checked now (cheaply: no torch, no SB3), opened where its
    tests run."""
    from .load import read_zip

    read_zip(model_path)
    given_artifact = Artifact(onnx_path) if onnx_path else None
    return Policy(key, model_path, onnx_path, loaded=None, given_artifact=given_artifact,
                  deferred=True, **options)


def _keys(pairs) -> list[str]:
    """Unique readable names (layouts.unique_names): a Zoo run's `ppo/CartPole-v1_1`, else
    the file's stem."""
    return unique_names([model or onnx for model, onnx in pairs])


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
    profile = config.getoption("hypothesis_profile", None)
    if profile:
        try:
            settings.get_profile(profile)
        except Exception:
            raise pytest.UsageError(
                f"--hypothesis-profile {profile}: no such profile; the suite registers 'quick' "
                "(the local default) and 'ci' (derandomized, the default when CI is set)"
            ) from None
    transform = config.getoption("action_transform")
    trust_code = config.getoption("trust_model_code")
    found = _models(config)
    pairs = _pairs(config, found.models)
    if _worker(config):
        _share_the_cores(min(config.workerinput["workercount"], len(pairs)))
    policies = []
    image_layout = config.getoption("image_layout")
    for key, (model_path, onnx_path), vecnormalize in zip(_keys(pairs), pairs,
                                                          _statistics(config, pairs)):
        options = {"transform": transform, "trust_code": trust_code,
                   "vecnormalize": vecnormalize, "image_layout": image_layout}
        try:
            if len(pairs) > 1 and model_path:
                policies.append(_deferred(key, model_path, onnx_path, **options))
            else:
                given_artifact = Artifact(onnx_path) if onnx_path else None
                loaded = _loaded(model_path, given_artifact, vecnormalize, transform,
                                 trust_code, image_layout)
                policies.append(Policy(key, model_path, onnx_path, loaded=loaded,
                                       given_artifact=given_artifact, **options))
        except (ModelLoadError, ArtifactError, ValueError) as exc:
            if len(pairs) == 1:  # the one thing to check cannot be: a usage error
                raise pytest.UsageError(str(exc)) from None
            # One of a zoo: its failing verdict; the others are still checked.
            policies.append(Policy(key, model_path, onnx_path, loaded=None,
                                   given_artifact=None, open_failure=str(exc), **options))
    report = config.getoption("report")
    run = Run(policies, spec.Level[config.getoption("level").upper()],
              Path(report).expanduser() if report else None,
              lambda line: _announce(config, line), found.passed_over)
    config.stash[RUN] = run
    config.pluginmanager.register(run, "policy-onnx-run")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Several policies: every clause test once per policy, the policy's name first in its id."""
    run = metafunc.config.stash[RUN]
    if "policy" in metafunc.fixturenames and len(run.policies) > 1 and run.openable:
        metafunc.parametrize("policy", run.openable, ids=[p.key for p in run.openable],
                             indirect=True, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash[RUN]
    run.suite_command = _suite_command(config, items)
    if run.policies and not run.openable:  # a zoo none of whose models opens: nothing to run
        config.hook.pytest_deselected(items=list(items))
        items.clear()
    if run.policies:
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
    return report


def _worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its controller sums up the run and writes the report."""
    return hasattr(config, "workerinput")


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN]
    lines = [f"policy-onnx {__version__}: POLICY_ONNX_SPEC {spec.SPEC_VERSION}, "
             f"hypothesis profile {settings.get_current_profile_name()!r}",
             f"parity tolerance: {RULE}"]
    if run.passed_over:
        lines.append(f"passed over: {len(run.passed_over)} best model(s) and checkpoint(s) of RL "
                     "Zoo runs, checked only when given as files (e.g. "
                     f"{run.passed_over[0]})")
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
    """The exit status follows the requested level; the JSON report is written."""
    run = session.config.stash.get(RUN, None)
    if run is None or _worker(session.config) or not run.judged:
        return
    if exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED,
                      pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.OK if run.level_met else pytest.ExitCode.TESTS_FAILED
    if run.report_path:
        settings_used = {"suite_version": __version__, "spec_version": spec.SPEC_VERSION,
                         "hypothesis_profile": settings.get_current_profile_name(),
                         "tolerance": RULE}
        write_json(run.report_path, report_document(settings_used, run.judged,
                                                   run.requested_level))


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:
    run = config.stash.get(RUN, None)
    if run is None or not run.judged:
        return
    write = terminalreporter.write_line
    terminalreporter.section("policy-onnx")
    for policy in run.judged:
        if len(run.policies) > 1:
            terminalreporter.write_sep("-", policy.key)
        if policy.open_failure:
            write(f"NOT CHECKED: {policy.open_failure}")
            write(f"level: none; requested {run.requested_level.label}: NOT MET")
            continue
        # A model zoo (or -q): a row per clause for every model would bury the ones that matter.
        verbosity = config.get_verbosity()
        problems_only = verbosity < 0 or (len(run.policies) > 1 and verbosity < 1)
        for line in policy.verdicts.summary_lines(policy.structure, policy.action_kind,
                                                  run.requested_level, problems_only):
            write(line)
        if policy.exported_path:
            write(f"exported artifact: {policy.exported_path} "
                  f"(sha256 {policy.artifact_sha256})")
        line = normalization_line(policy.normalization_facts, policy.vecnormalize)
        if line:
            write(line)
        for line in (*policy.verdicts.statistics_lines(policy.action_kind),
                     *policy.verdicts.coverage_lines()):
            write(line)
    if len(run.judged) > 1:
        terminalreporter.write_sep("-", "all policies")
        write(policies_line(run.judged, run.requested_level))
    if run.report_path:
        write(f"report: {run.report_path}")
    failed = len(terminalreporter.stats.get("failed", []))
    if failed and run.level_met:
        write(f"exit status 0: every policy meets the requested level "
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
