"""The loader unpickles only what inference needs, and loses nothing a stock load gives."""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import pickle
import types
import zipfile

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest
import torch

from policy_onnx.load import (_ALLOWED_GLOBALS, RefusedGlobal, _allowed_class_bases,
                              algorithm_class, load_model, safe_unpickle)

from fixtures.models import FIXTURES, SpacesEnv

from .conftest import REAL_MODEL, sha256


def _stock_load(path, env=None):
    return algorithm_class(load_model(path).algorithm).load(path, env=env, device="cpu")


def _samples(space, n: int):
    """n observations of the space, stacked (per key for a Dict); Box floats up to three times
    their bounds."""
    if isinstance(space, gym.spaces.Dict):
        return {key: _samples(sub, n) for key, sub in space.spaces.items()}
    with np.errstate(over="ignore"):  # bounds of +-3.4e38 tripled overflow to inf: fine here
        scale = 3 if isinstance(space, gym.spaces.Box) and space.dtype.kind == "f" else 1
        return np.stack([space.sample() * scale for _ in range(n)])


@pytest.mark.filterwarnings("ignore:numpy.core.numeric is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", ["real", *(f.name for f in FIXTURES)])
def test_safe_load_predicts_like_a_stock_load(fixture_models, name):
    path = REAL_MODEL if name == "real" else fixture_models[name]
    safe = load_model(path).sb3
    fixture = next((f for f in FIXTURES if f.name == name), None)
    # A HER agent's stock load demands an environment (the suite's needs none).
    her = fixture is not None and fixture.kwargs.get("replay_buffer_class") == "her"
    stock = _stock_load(path, SpacesEnv(fixture.observation_space, fixture.action_space)
                        if her else None)
    obs = _samples(stock.observation_space, 256)
    assert np.array_equal(safe.predict(obs, deterministic=True)[0],
                          stock.predict(obs, deterministic=True)[0])
    assert safe.observation_space == stock.observation_space
    assert safe.action_space == stock.action_space


def test_loading_builds_no_training_optimizer(fixture_models):
    """SB3 builds (and restores) an optimizer with every policy; inference needs none, and a
    torch optimizer would import torch._dynamo, the largest part of a check's start-up."""
    import subprocess
    import sys

    code = ("import sys; from policy_onnx.load import load_model; "
            f"model = load_model({str(REAL_MODEL)!r}).sb3; "
            "print(type(model.policy.optimizer).__name__, 'torch._dynamo' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["NoOptimizer", "False"], done.stderr
    sac = load_model(fixture_models["sac"]).sb3  # an actor and a critic, each with its own
    assert {type(sac.actor.optimizer).__name__, type(sac.critic.optimizer).__name__} \
        == {"NoOptimizer"}


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _rewrite_zip(source, target, edit) -> None:
    with zipfile.ZipFile(source) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    edit(entries)
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)


def _payload_in(key, marker):
    def edit(entries):
        data = json.loads(entries["data"])
        payload = base64.b64encode(pickle.dumps(_WritesMarker(marker))).decode()
        data[key] = {":type:": "<class 'object'>", ":serialized:": payload}
        entries["data"] = json.dumps(data).encode()
    return edit


def _payload_in_weights(marker):
    def edit(entries):
        buffer = io.BytesIO()
        torch.save({"weights": _WritesMarker(marker)}, buffer)
        entries["policy.pth"] = buffer.getvalue()
    return edit


CRAFTED = {  # where the payload sits -> what the suite says
    "observation_space": "refused to unpickle posix.system from 'observation_space'",
    "policy_class": "refused to unpickle posix.system from 'policy_class'",
    "policy_kwargs": "refused to unpickle posix.system from 'policy_kwargs'",
    "unknown_extra_key": None,  # dropped unread: the model loads and conforms
    "policy.pth": "Stable-Baselines3 could not load it as PPO (UnpicklingError: Weights only load failed",
}


@pytest.mark.parametrize("where", CRAFTED)
def test_crafted_payload_never_runs(conformance, tmp_path, where):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.zip"
    edit = _payload_in_weights(marker) if where == "policy.pth" else _payload_in(where, marker)
    _rewrite_zip(REAL_MODEL, crafted, edit)
    before = sha256(crafted)
    run = conformance.run("--model", str(crafted))
    expected = CRAFTED[where]
    if expected is None:
        assert run.ret == 0, run.stdout
    else:
        assert run.ret == 4 and expected in run.stderr, run.stderr
        assert "--trust-model-code" in run.stderr or where == "policy.pth"
    assert not marker.exists()
    assert sha256(crafted) == before


@pytest.mark.filterwarnings("ignore:numpy.core.numeric is deprecated:DeprecationWarning")
def test_trust_model_code_runs_what_the_file_holds(conformance, tmp_path):
    """The opt-in really is an opt-in: with it, SB3's own unpickling runs the payload."""
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.zip"
    _rewrite_zip(REAL_MODEL, crafted, _payload_in("unknown_extra_key", marker))
    conformance.run("--model", str(crafted), "--trust-model-code", "-k", "GRAPH-01")
    assert marker.exists()


FORBIDDEN = ["builtins", "copyreg", "types", "functools", "operator", "os", "posix", "subprocess",
             "sys", "importlib", "cloudpickle", "pickle", "torch._C", "numpy.lib", "code"]


def test_allow_list_stays_minimal():
    modules = {module for module, _ in _ALLOWED_GLOBALS}
    modules |= {prefix.rstrip(".") for prefix, _ in _allowed_class_bases()}
    for module in modules:
        assert not any(module == f or module.startswith(f + ".") for f in FORBIDDEN), module


PAYLOADS = {
    "builtins.eval": lambda: pickle.dumps(eval),
    "builtins.getattr": lambda: pickle.dumps(getattr),
    "a code object": lambda: cloudpickle.dumps((lambda: 0).__code__),
    "the code type": lambda: cloudpickle.dumps(types.CodeType),
    "a lambda": lambda: cloudpickle.dumps(lambda: 1),
    "functools.partial": lambda: pickle.dumps(functools.partial(print, "x")),
    "a class defined by value": lambda: cloudpickle.dumps(type("Local", (), {})),
    "os.system": lambda: pickle.dumps(os.system),
    "numpy.load": lambda: pickle.dumps(np.load),
    "torch.load": lambda: pickle.dumps(torch.load),
}


@pytest.mark.parametrize("payload", PAYLOADS)
def test_code_and_functions_are_refused(payload):
    with pytest.raises(RefusedGlobal):
        safe_unpickle(base64.b64encode(PAYLOADS[payload]()).decode())


def test_legacy_gym_spaces_are_read_as_gymnasium_and_nothing_else_of_gym():
    """SB3 1.x pickled gym's spaces: their classes resolve to gymnasium's (no gym import), and
    every other name under gym stays refused."""
    import gymnasium

    space = gymnasium.spaces.Box(-1.0, 1.0, (3,), np.float32)
    legacy = pickle.dumps(space, protocol=3).replace(b"gymnasium.spaces.box", b"gym.spaces.box")
    assert b"gym.spaces.box" in legacy
    assert safe_unpickle(base64.b64encode(legacy).decode()) == space
    for payload in (b"cgym.spaces.utils\nflatten\n.", b"cgym\nmake\n.",
                    b"cgym.spaces.box\nnp\n."):
        with pytest.raises(RefusedGlobal):
            safe_unpickle(base64.b64encode(payload).decode())
