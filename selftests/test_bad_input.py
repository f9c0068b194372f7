"""Bad input gets a usage error that names the problem and the fix; no INTERNALERROR, no
traceback, and the user's files are left byte-identical."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile

import gymnasium as gym
import numpy as np
import onnx
import pytest
import torch

from fixtures.models import SpacesEnv, box

from .conftest import REAL_MODEL, REAL_ONNX, sha256


class CustomActivation(torch.nn.Tanh):
    """A class from outside the allow-list, pickled by reference into policy_kwargs."""


def assert_usage_error(run, *parts: str) -> None:
    assert run.ret == 4, run.stdout + run.stderr
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    for part in parts:
        assert part in run.stderr


def _nested_dict_observation_zip(path):
    """A MultiInputPolicy zip whose observation space is a Dict inside a Dict (which SB3's
    extractors do not take either)."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    observations = gym.spaces.Dict({"state": box(-1.0, 1.0, (3,)), "goal": box(-1.0, 1.0, (2,))})
    PPO("MultiInputPolicy", SpacesEnv(observations, box(-1.0, 1.0, (2,))), seed=0,
        device="cpu").save(path)
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    data = json.loads(entries["data"])
    nested = gym.spaces.Dict({"state": box(-1.0, 1.0, (3,)), "goal": observations})
    data["observation_space"][":serialized:"] = base64.b64encode(pickle.dumps(nested)).decode()
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def _discrete_ppo_zip(path):
    import gymnasium as gym
    from stable_baselines3 import PPO

    env = SpacesEnv(box(-1.0, 1.0, (3,)), gym.spaces.Discrete(3, start=1))
    PPO("MlpPolicy", env, seed=0, device="cpu").save(path)
    return path


def _edited_real_zip(path, edit):
    with zipfile.ZipFile(REAL_MODEL) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    edit(entries)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return path


def _truncate_weights(entries):
    entries["policy.pth"] = entries["policy.pth"][: len(entries["policy.pth"]) // 2]


def _huge_data(entries):
    entries["data"] = b" " * (65 * 2**20) + entries["data"]


def _billion_element_observations(entries):
    data = json.loads(entries["data"])
    space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
    space._shape = (10**9,)  # the bounds stay small: only the declared shape is huge
    data["observation_space"][":serialized:"] = base64.b64encode(pickle.dumps(space)).decode()
    entries["data"] = json.dumps(data).encode()


def _custom_class_zip(path):
    from stable_baselines3 import PPO

    env = SpacesEnv(box(-1.0, 1.0, (3,)), box(-1.0, 1.0, (2,)))
    PPO("MlpPolicy", env, seed=0, device="cpu",
        policy_kwargs={"activation_fn": CustomActivation}).save(path)
    return path


def _file(path, content: bytes):
    path.write_bytes(content)
    return path


def _zip_without_data(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("policy.pth", b"weights")
    return path


MODEL_CASES = {
    "missing": (lambda p: p / "absent.zip", ["no such file"]),
    "a folder without models": (lambda p: p, ["the folder holds no model .zip"]),
    "empty file": (lambda p: _file(p / "empty.zip", b""), ["not a zip archive"]),
    "not a zip": (lambda p: _file(p / "m.zip", b"hello"), ["not a zip archive", "model.save()"]),
    "zip without data": (lambda p: _zip_without_data(p / "m.zip"),
                         ["no 'data' entry, so it is not an SB3 model"]),
    "unsupported observation space": (
        lambda p: _nested_dict_observation_zip(p / "dict.zip"),
        ["observation space Dict(", "is not supported yet: goal: Dict(",
         "a Dict's entries may be Box, Discrete"]),
    "unsupported action space": (lambda p: _discrete_ppo_zip(p / "discrete.zip"),
                                 ["action space Discrete(3, start=1) is not supported yet"]),
    "truncated weights": (lambda p: _edited_real_zip(p / "m.zip", _truncate_weights),
                          ["Stable-Baselines3 could not load it as PPO", "re-save the model"]),
    "a 65 MiB data entry": (lambda p: _edited_real_zip(p / "m.zip", _huge_data),
                            ["refused: the zip unpacks to", "over the suite's limits"]),
    "a billion-element observation space": (
        lambda p: _edited_real_zip(p / "m.zip", _billion_element_observations),
        ["refused: the observation space has 1,000,000,000 elements"]),
    "class outside the allow-list": (
        lambda p: _custom_class_zip(p / "custom.zip"),
        ["refused to unpickle selftests.test_bad_input.CustomActivation from 'policy_kwargs'",
         "--trust-model-code"]),
}


EXPORTER_FIX = "pass the .onnx file written by the exporter"
ONNX_CASES = {
    "missing": (lambda p: p / "absent.onnx", ["no such file", EXPORTER_FIX]),
    "a folder without artifacts": (lambda p: p, ["the folder holds no *.onnx file"]),
    "empty": (lambda p: _file(p / "a.onnx", b""), ["the file is empty", EXPORTER_FIX]),
    "not onnx": (lambda p: _file(p / "a.onnx", b"\x00\xffnot a protobuf" * 8),
                 ["not an ONNX model", EXPORTER_FIX]),
    "a model zip": (lambda p: REAL_MODEL, ["not an ONNX model", EXPORTER_FIX]),
    "truncated": (lambda p: _file(p / "a.onnx", REAL_ONNX.read_bytes()[:300]),
                  ["not an ONNX model", EXPORTER_FIX]),
    "external data outside its folder": (
        lambda p: _with_external_data(p, "../secret.bin", 64),
        ["keeps its data at '../secret.bin', outside the artifact's folder"]),
    "a multi-GB initializer": (lambda p: _with_external_data(p, "weights.bin", 3 * 2**30),
                               ["refused:", "over the suite's limit", "check that this is"]),
}


def _with_external_data(directory, location: str, length: int):
    """The real artifact with its first initializer stored externally at `location`."""
    proto = onnx.load(str(REAL_ONNX))
    tensor = proto.graph.initializer[0]
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        tensor.external_data.add(key=key, value=value)
    folder = directory / "artifact"
    folder.mkdir()
    onnx.save(proto, str(folder / "a.onnx"))
    return folder / "a.onnx"


RUNNING = {"GRAPH-02", "BEH-01", "BEH-02", "BEH-03", "BEH-04", "BEH-05"}
UNLOADABLE = {  # artifacts ONNX Runtime refuses: failing clauses with a one-line cause
    "IR version 99": (lambda p: p.__setattr__("ir_version", 99),
                      RUNNING | {"GRAPH-01"}, "Unsupported model IR version: 99"),
    "custom operator domain": (lambda p: _custom_domain(p), RUNNING | {"PORT-01"},
                               "com.example.policy"),
}


def _custom_domain(proto):
    proto.opset_import.append(onnx.helper.make_opsetid("com.example.policy", 1))
    proto.graph.node[-1].domain = "com.example.policy"


@pytest.mark.parametrize("case", UNLOADABLE)
def test_artifact_the_runtime_cannot_load(conformance, tmp_path, case):
    edit, failing, cause = UNLOADABLE[case]
    proto = onnx.load(str(REAL_ONNX))
    edit(proto)
    path = tmp_path / "a.onnx"
    onnx.save(proto, str(path))
    before = sha256(path)
    run = conformance.run("--onnx", str(path))
    assert run.ret == 1
    assert run.with_outcome("failed") == failing
    for clause_id in failing - {"GRAPH-01"}:
        message = run.messages[clause_id]
        assert message.startswith(f"[{clause_id}] ONNX Runtime" if clause_id != "PORT-01"
                                  else f"[{clause_id}] ") and cause in message
        assert "\n" not in message.strip() and "Traceback" not in message
    assert "INTERNALERROR" not in run.stdout + run.stderr
    assert sha256(path) == before


@pytest.mark.parametrize("option, case", [*(("--model", c) for c in MODEL_CASES),
                                           *(("--onnx", c) for c in ONNX_CASES)])
def test_bad_input_file(conformance, tmp_path, option, case):
    make, parts = (MODEL_CASES if option == "--model" else ONNX_CASES)[case]
    path = make(tmp_path)
    before = sha256(path) if path.is_file() else None
    assert_usage_error(conformance.run(option, str(path)), f"{option} {path}", *parts)
    assert (sha256(path) if path.is_file() else None) == before


def test_models_and_artifacts_that_do_not_pair(conformance, tmp_path):
    run = conformance.run("--model", str(REAL_MODEL), "--model", str(REAL_MODEL),
                          "--onnx", str(REAL_ONNX))
    assert_usage_error(run, "2 model(s) but 1 --onnx artifact(s)", "once per --model")
    assert_usage_error(conformance.run("--model", str(REAL_MODEL), "--onnx", str(tmp_path)),
                       f"--onnx {tmp_path}: no artifact for 1 model(s)",
                       f"{REAL_MODEL.stem}.onnx", "<model name>.onnx for every model")


def test_nothing_to_check(conformance):
    assert_usage_error(conformance.run(), "nothing to check", "--model m.zip")


def test_transform_that_does_not_fit_the_policy(conformance):
    assert_usage_error(conformance.run("--model", str(REAL_MODEL), "--action-transform", "tanh"),
                       "--action-transform tanh", "clipped by predict()", "none, clip")


def test_unknown_transform_value(conformance):
    run = conformance.run("--onnx", str(REAL_ONNX), "--action-transform", "sigmoid")
    assert run.ret == 4
    assert "invalid choice: 'sigmoid'" in run.stderr


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _statistics_of(path, **state):
    """A pickle shaped like VecNormalize.save() writes, with `state` in place of its own."""
    import copyreg
    import io

    from stable_baselines3.common.vec_env import VecNormalize

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):  # VecNormalize.__getstate__ needs a venv
            if type(obj) is VecNormalize:
                return copyreg.__newobj__, (VecNormalize,), dict(obj.__dict__)
            return NotImplemented

    stored = VecNormalize.__new__(VecNormalize)
    stored.__dict__.update({"norm_obs": True, "epsilon": 1e-8, "clip_obs": 10.0, **state})
    buffer = io.BytesIO()
    Pickler(buffer, protocol=3).dump(stored)
    path.write_bytes(buffer.getvalue())
    return path


def _rms(shape, mean=0.0, var=1.0):
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    rms = RunningMeanStd(shape=shape)
    rms.mean = np.full(shape, mean, dtype=np.float64)
    rms.var = np.full(shape, var, dtype=np.float64)
    return rms


def _unusable(path, mean=0.0, var=1.0, **state):
    """Statistics for the real model's 4-element observations with one odd value: `mean` and
    `var` at element 2, the others as given in `state` (epsilon, clip_obs)."""
    rms = _rms((4,))
    rms.mean[2], rms.var[2] = mean, var
    return _statistics_of(path, obs_rms=rms, **state)


STATISTICS_FIX = "pass the vecnormalize.pkl saved with this model"
STATISTICS_CASES = {  # the real model has 4-element observations
    "missing": (lambda p: p / "absent.pkl", ["no such file", STATISTICS_FIX]),
    "empty": (lambda p: _file(p / "v.pkl", b""), ["the file is empty", STATISTICS_FIX]),
    "not a pickle": (lambda p: _file(p / "v.pkl", b"hello"), ["unreadable", STATISTICS_FIX]),
    "a model zip": (lambda p: REAL_MODEL, ["unreadable", STATISTICS_FIX]),
    "another model's statistics": (
        lambda p: _statistics_of(p / "v.pkl", obs_rms=_rms((17,))),
        ["statistics of shape (17,) for the observation, which is Box(", "in the model"]),
    "no obs_rms": (lambda p: _statistics_of(p / "v.pkl"),
                   ["not VecNormalize statistics (no obs_rms)"]),
    # Values SB3 would never write, each refused by name (clip_obs = inf is valid: no clip).
    "a NaN mean": (lambda p: _unusable(p / "v.pkl", mean=np.nan),
                   ["obs_rms.mean is nan at element 2"]),
    "a mean beyond float32": (lambda p: _unusable(p / "v.pkl", mean=1e39),
                              ["obs_rms.mean is 1e+39 at element 2", "finite in float32"]),
    "an infinite variance": (lambda p: _unusable(p / "v.pkl", var=np.inf),
                             ["obs_rms.var is inf at element 2"]),
    "a negative variance": (lambda p: _unusable(p / "v.pkl", var=-1.0),
                            ["obs_rms.var is -1.0 at element 2", "a finite number >= 0"]),
    "a NaN epsilon": (lambda p: _unusable(p / "v.pkl", epsilon=np.nan), ["epsilon is nan"]),
    "clip_obs 0": (lambda p: _unusable(p / "v.pkl", clip_obs=0.0),
                   ["clip_obs is 0.0 (it must be > 0; inf switches the clip off)"]),
    "a NaN clip_obs": (lambda p: _unusable(p / "v.pkl", clip_obs=np.nan), ["clip_obs is nan"]),
    "a clip_obs that is not a number": (lambda p: _unusable(p / "v.pkl", clip_obs="ten"),
                                        ["epsilon and clip_obs are not numbers"]),
    "a standard deviation of 0 in float32": (
        lambda p: _unusable(p / "v.pkl", var=0.0, epsilon=1e-100),
        ["sqrt(var + epsilon) is 1e-50 at element 2, 0 in float32"]),
    "code in the pickle": (
        lambda p: _statistics_of(p / "v.pkl", obs_rms=_rms((4,)), extra=_RunsCode(p / "ran")),
        ["refused to unpickle posix.system", "could run code"]),
}


@pytest.mark.parametrize("case", STATISTICS_CASES)
def test_bad_statistics_file(conformance, tmp_path, case):
    make, parts = STATISTICS_CASES[case]
    path = make(tmp_path)
    before = sha256(path) if path.is_file() else None
    run = conformance.run("--model", str(REAL_MODEL), "--vecnormalize", str(path))
    assert_usage_error(run, f"--vecnormalize {path}", *parts)
    assert (sha256(path) if path.is_file() else None) == before
    assert not (tmp_path / "ran").exists()


def test_vecnormalize_options_that_do_not_fit(conformance, tmp_path):
    assert_usage_error(conformance.run("--onnx", str(REAL_ONNX), "--vecnormalize", "none"),
                       "--vecnormalize needs --model")
    assert_usage_error(conformance.run("--model", str(REAL_MODEL), "--model", str(REAL_MODEL),
                                       "--vecnormalize", "a.pkl", "--vecnormalize", "b.pkl",
                                       "--vecnormalize", "c.pkl"),
                       "2 model(s) but 3 --vecnormalize value(s)")
