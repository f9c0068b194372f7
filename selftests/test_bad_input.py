"""Bad input gets a usage error that names the problem and the fix; no INTERNALERROR, no
traceback, and the user's files are left byte-identical."""

from __future__ import annotations

import zipfile

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


def _sac_zip(path):
    from stable_baselines3 import SAC

    env = SpacesEnv(box(-1.0, 1.0, (3,)), box(-1.0, 1.0, (2,)))
    SAC("MlpPolicy", env, buffer_size=10, seed=0, device="cpu").save(path)
    return path


def _discrete_ppo_zip(path):
    import gymnasium as gym
    from stable_baselines3 import PPO

    env = SpacesEnv(box(-1.0, 1.0, (3,)), gym.spaces.Discrete(3))
    PPO("MlpPolicy", env, seed=0, device="cpu").save(path)
    return path


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
    "directory": (lambda p: p, ["is a directory", "model.save()"]),
    "empty file": (lambda p: _file(p / "empty.zip", b""), ["not a zip archive"]),
    "not a zip": (lambda p: _file(p / "m.zip", b"hello"), ["not a zip archive", "model.save()"]),
    "zip without data": (lambda p: _zip_without_data(p / "m.zip"),
                         ["no 'data' entry, so it is not an SB3 model"]),
    "unsupported algorithm": (lambda p: _sac_zip(p / "sac.zip"),
                              ["SAC models are not supported yet", "supported: PPO, A2C, TRPO"]),
    "unsupported action space": (lambda p: _discrete_ppo_zip(p / "discrete.zip"),
                                 ["action space Discrete(3) is not supported yet"]),
    "class outside the allow-list": (
        lambda p: _custom_class_zip(p / "custom.zip"),
        ["refused to unpickle selftests.test_bad_input.CustomActivation from 'policy_kwargs'",
         "--trust-model-code"]),
}


@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model(conformance, tmp_path, case):
    make, parts = MODEL_CASES[case]
    path = make(tmp_path)
    before = sha256(path) if path.is_file() else None
    assert_usage_error(conformance.run("--model", str(path)), f"--model {path}", *parts)
    assert (sha256(path) if path.is_file() else None) == before


ONNX_CASES = {
    "missing": (lambda p: p / "absent.onnx", ["no such file"]),
    "empty": (lambda p: _file(p / "a.onnx", b""), ["the file is empty"]),
    "not onnx": (lambda p: _file(p / "a.onnx", b"\x00\xffnot a protobuf" * 8),
                 ["not an ONNX model"]),
    "a model zip": (lambda p: REAL_MODEL, ["not an ONNX model"]),
}


@pytest.mark.parametrize("case", ONNX_CASES)
def test_bad_onnx(conformance, tmp_path, case):
    make, parts = ONNX_CASES[case]
    path = make(tmp_path)
    before = sha256(path) if path.is_file() else None
    assert_usage_error(conformance.run("--onnx", str(path)), f"--onnx {path}", *parts,
                       "pass the .onnx file written by the exporter")
    assert (sha256(path) if path.is_file() else None) == before


def test_nothing_to_check(conformance):
    assert_usage_error(conformance.run(), "nothing to check", "--model m.zip")


def test_transform_that_does_not_fit_the_policy(conformance):
    assert_usage_error(conformance.run("--model", str(REAL_MODEL), "--action-transform", "tanh"),
                       "--action-transform tanh", "squash_output=False", "none, clip")


def test_unknown_transform_value(conformance):
    run = conformance.run("--onnx", str(REAL_ONNX), "--action-transform", "sigmoid")
    assert run.ret == 4
    assert "invalid choice: 'sigmoid'" in run.stderr
