"""The session of a conformance run: each policy under test (its model and artifact, opened
safely; the suite's own export, made once; its counterexamples and the commands that replay
them) and the run that checks them, which gathers what they found into the run's record
(record.py) from the test reports. The plugin (plugin.py) makes them from the command line and
hands them to the clause tests through its fixtures."""

from __future__ import annotations

import json
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

from . import spec
from .artifact import Artifact, ArtifactError, sha256
from .layouts import Found, find_models, find_statistics, unique_names
from .load import LoadedModel, ModelLoadError, load_model
from .parity import ParityStats
from .record import PolicyRecord, RunRecord
from .shards import Shard


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
    record: PolicyRecord = None  # what the run found: filled from the test reports
    exported_path: Path | None = None
    export_failure: str | None = None
    counterexample_dir: Path | None = None  # set by the `policy` fixture
    suite_command: tuple[str, ...] = ("pytest", "--pyargs", "policy_onnx.conformance")

    def __post_init__(self):
        self.record = PolicyRecord(self.key)

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
        return _statistics_file(self.model_path, self.vecnormalize)

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
    record: RunRecord | None = None  # made when the session finishes
    shard: dict | None = None  # --shard: which, and every policy named (Shard.describe)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Called in the process that runs the tests, and in the pytest-xdist controller for
        the reports of its workers."""
        properties = dict(report.user_properties)
        if "policy" not in properties:
            return
        policy = next(p for p in self.policies if p.key == properties["policy"])
        policy.record.take(report)
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
        return [p for p in self.openable if p.record.by_clause]

    @property
    def judged(self) -> list[Policy]:
        """What the verdict of the run is about: the policies checked and those that could not
        be opened (each a failing verdict)."""
        return [p for p in self.policies if p.open_failure or p.record.by_clause]

    def finish(self, settings_used: dict) -> RunRecord:
        """The record of the run, its policies described as they were checked."""
        for policy in self.judged:
            record = policy.record
            record.description = policy.describe()
            record.open_failure = policy.open_failure
            if not policy.open_failure:
                record.structure, record.action_kind = policy.structure, policy.action_kind
            record.exported_path = str(policy.exported_path) if policy.exported_path else None
            record.vecnormalize_option = policy.vecnormalize
        if self.shard:
            settings_used = {**settings_used, "shard": self.shard}
        self.record = RunRecord(settings_used, self.requested_level,
                                [p.record for p in self.judged])
        return self.record


def policies_from(config: pytest.Config, shard: Shard | None = None
                  ) -> tuple[list[Policy], list[Path], dict[str, str | None]]:
    """The policies the options name (--model, --onnx, --vecnormalize and what applies to each),
    those `shard` is dealt only, opened; the RL Zoo best models and checkpoints passed over in
    folders; and the name of every policy named, with (for a shard) the SHA-256 of its files.
    A bad option is a usage error; so is a model or artifact that cannot be opened when it is
    the only one (one of several gets a failing verdict instead)."""
    found = _models(config)
    pairs = _pairs(config, found.models)
    options = {"transform": config.getoption("action_transform"),
               "trust_code": config.getoption("trust_model_code"),
               "image_layout": config.getoption("image_layout")}
    keys = _keys(pairs)
    dealt = shard.deals(keys) if shard else keys
    statistics = _statistics(config, pairs)
    policies = []
    for key, (model_path, onnx_path), vecnormalize in zip(keys, pairs, statistics):
        if key not in dealt:
            continue
        try:
            if len(pairs) > 1 and model_path:
                policies.append(_deferred(key, model_path, onnx_path, vecnormalize=vecnormalize,
                                          **options))
            else:
                given_artifact = Artifact(onnx_path) if onnx_path else None
                loaded = _loaded(model_path, given_artifact, vecnormalize, options["transform"],
                                 options["trust_code"], options["image_layout"])
                policies.append(Policy(key, model_path, onnx_path, loaded=loaded,
                                       given_artifact=given_artifact,
                                       vecnormalize=vecnormalize, **options))
        except (ModelLoadError, ArtifactError, ValueError) as exc:
            if len(pairs) == 1:  # the one thing to check cannot be: a usage error
                raise pytest.UsageError(str(exc)) from None
            # One of a zoo: its failing verdict; the others are still checked.
            policies.append(Policy(key, model_path, onnx_path, loaded=None,
                                   given_artifact=None, open_failure=str(exc),
                                   vecnormalize=vecnormalize, **options))
    return policies, found.passed_over, {
        key: _contents(*pair, vecnormalize) if shard else None
        for key, pair, vecnormalize in zip(keys, pairs, statistics)}


def _contents(model_path: Path | None, onnx_path: Path | None, vecnormalize: str | None) -> str:
    """A policy's files by their SHA-256, model+artifact+statistics ("-" where there is none,
    "none" for --vecnormalize none): what the shards of one run must agree on."""
    def digest(path: Path | None) -> str:
        return sha256(path) if path is not None and path.is_file() else "-"

    statistics = "none" if model_path is not None and vecnormalize == "none" \
        else digest(_statistics_file(model_path, vecnormalize))
    return f"{digest(model_path)}+{digest(onnx_path)}+{statistics}"


def _statistics_file(model_path: Path | None, vecnormalize: str | None) -> Path | None:
    """The statistics file of a model (unread): --vecnormalize as given, else found by layout;
    None for 'none' or without a model."""
    if vecnormalize == "none" or model_path is None:
        return None
    return Path(vecnormalize) if vecnormalize else find_statistics(model_path)


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


def _keys(pairs) -> list[str]:
    """Unique readable names (layouts.unique_names): a Zoo run's `ppo/CartPole-v1_1`, else
    the file's stem."""
    return unique_names([model or onnx for model, onnx in pairs])


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
