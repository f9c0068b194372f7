"""The loader unpickles only what inference needs, and loses nothing a stock load gives."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from policy_onnx.load import ModelLoadError, load_model

from .conftest import REAL_MODEL


def _stock_load(path):
    from sb3_contrib import TRPO
    from stable_baselines3 import A2C, PPO

    name = path.stem
    cls = TRPO if name.startswith("trpo") else A2C if name.startswith("a2c") else PPO
    return cls.load(path, device="cpu")


@pytest.mark.parametrize("name", ["real", "ppo_default", "ppo_asymmetric_relu", "a2c_matrix_obs",
                                  "trpo", "ppo_gsde", "ppo_gsde_squash"])
def test_safe_load_predicts_like_a_stock_load(fixture_models, name):
    path = REAL_MODEL if name == "real" else fixture_models[name]
    safe = load_model(path).sb3
    stock = _stock_load(path)
    obs = np.stack([stock.observation_space.sample() * 3 for _ in range(256)])
    assert np.array_equal(safe.predict(obs, deterministic=True)[0],
                          stock.predict(obs, deterministic=True)[0])
    assert safe.observation_space == stock.observation_space
    assert safe.action_space == stock.action_space


class _WritesMarker:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _with_payload(source, target, key, marker):
    """A copy of `source` whose `data` entry `key` unpickles by running a shell command."""
    with zipfile.ZipFile(source) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    data = json.loads(entries["data"])
    payload = base64.b64encode(pickle.dumps(_WritesMarker(marker))).decode()
    data[key] = {":type:": "<class 'object'>", ":serialized:": payload}
    entries["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return target


@pytest.mark.parametrize("key", ["observation_space", "policy_class", "unknown_extra_key"])
def test_crafted_payload_never_runs(tmp_path, key):
    marker = tmp_path / "pwned"
    crafted = _with_payload(REAL_MODEL, tmp_path / "crafted.zip", key, marker)
    if key == "unknown_extra_key":
        load_model(crafted)  # dropped unread; the model still loads
    else:
        with pytest.raises(ModelLoadError, match="refused to unpickle posix.system"):
            load_model(crafted)
    assert not marker.exists()
