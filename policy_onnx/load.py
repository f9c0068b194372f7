"""Open an SB3 model zip without running code from it.

The only module that knows SB3's file format. `PPO.load` unpickles every `:serialized:` entry of
the zip's `data` JSON with cloudpickle, so a crafted zip runs code on load. Here only the entries
inference needs are unpickled, through an allow-list; every other serialized entry is replaced by
a harmless default before SB3 sees it (SB3 does not deserialize keys given as `custom_objects`).
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ModelLoadError(Exception):
    """A model file that cannot be checked; the message names the problem and the fix."""


SUPPORTED_ALGORITHMS = ("PPO", "A2C", "TRPO")

# Entries inference needs; unpickled through the allow-list.
NEEDED_KEYS = ("observation_space", "action_space", "policy_class", "policy_kwargs")
# Entries SB3 turns into schedules when the model is set up: a number is a valid stand-in.
SCHEDULE_KEYS = ("learning_rate", "lr_schedule", "clip_range", "clip_range_vf",
                 "exploration_schedule")

# Policy classes of families the suite does not check yet, by the algorithm that uses them.
_OTHER_FAMILIES = {
    "SACPolicy": "SAC", "TD3Policy": "TD3/DDPG", "DQNPolicy": "DQN", "QRDQNPolicy": "QR-DQN",
    "TQCPolicy": "TQC", "MaskableActorCriticPolicy": "MaskablePPO",
    "RecurrentActorCriticPolicy": "RecurrentPPO", "ARSPolicy": "ARS", "CrossQPolicy": "CrossQ",
}

_NUMPY_GLOBALS = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pcg64", "PCG64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("collections", "OrderedDict"),
}


def _allowed_class_bases() -> list[tuple[str, type]]:
    import gymnasium
    import torch
    from stable_baselines3.common.policies import BasePolicy
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    return [
        ("gymnasium.spaces.", gymnasium.spaces.Space),
        ("stable_baselines3.", BasePolicy),
        ("sb3_contrib.", BasePolicy),
        ("stable_baselines3.", BaseFeaturesExtractor),
        ("torch.nn.modules.activation", torch.nn.Module),
        ("torch.optim.", torch.optim.Optimizer),
    ]


class RefusedGlobal(Exception):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class AllowListUnpickler(pickle.Unpickler):
    """Resolves only the numpy reconstruction helpers and the classes inference needs."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # pickles written by numpy 1.x
            module = "numpy._core." + module[len("numpy.core."):]
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        if "." not in name:
            for prefix, base in _allowed_class_bases():
                if module.startswith(prefix) or module == prefix.rstrip("."):
                    obj = getattr(importlib.import_module(module), name, None)
                    if isinstance(obj, type) and issubclass(obj, base):
                        return obj
        raise RefusedGlobal(module, name)


def safe_unpickle(payload: str) -> Any:
    return AllowListUnpickler(io.BytesIO(base64.b64decode(payload))).load()


@dataclass
class LoadedModel:
    path: Path
    algorithm: str
    sb3: Any  # the stable_baselines3 BaseAlgorithm


def read_data(path: Path) -> dict:
    """The `data` JSON of an SB3 zip, with cheap checks that name what is wrong."""
    fix = "pass the .zip written by model.save() of Stable-Baselines3"
    if not path.exists():
        raise ModelLoadError(f"--model {path}: no such file; {fix}")
    if not path.is_file():
        raise ModelLoadError(f"--model {path}: is a directory, not a file; {fix}")
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"--model {path}: not a zip archive; {fix}")
    try:
        with zipfile.ZipFile(path) as archive:
            if "data" not in archive.namelist():
                raise ModelLoadError(
                    f"--model {path}: zip has no 'data' entry, so it is not an SB3 model; {fix}")
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelLoadError(f"--model {path}: unreadable SB3 'data' entry ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"--model {path}: 'data' is not a JSON object; {fix}")
    return data


def _is_serialized(value: Any) -> bool:
    return isinstance(value, dict) and ":serialized:" in value


def safe_custom_objects(path: Path, data: dict) -> dict[str, Any]:
    """Values for every serialized entry, so that SB3 unpickles none of them itself."""
    objects: dict[str, Any] = {}
    for key, value in data.items():
        if not _is_serialized(value):
            continue
        if key in NEEDED_KEYS:
            try:
                objects[key] = safe_unpickle(value[":serialized:"])
            except RefusedGlobal as refused:
                raise ModelLoadError(
                    f"--model {path}: refused to unpickle {refused.qualified_name} from "
                    f"'{key}': it is not a class inference needs, and loading it could run code. "
                    "If you trust this file, rerun with --trust-model-code") from None
            except Exception as exc:  # corrupt payloads: base64, pickle or reconstruction errors
                raise ModelLoadError(
                    f"--model {path}: '{key}' cannot be read ({type(exc).__name__}: {exc}); "
                    "re-save the model with model.save()") from None
        else:
            objects[key] = 0.0 if key in SCHEDULE_KEYS else None
    return objects


def detect_algorithm(path: Path, data: dict, policy_class: Any) -> str:
    name = getattr(policy_class, "__name__", repr(policy_class))
    if name in _OTHER_FAMILIES:
        raise ModelLoadError(
            f"--model {path}: {_OTHER_FAMILIES[name]} models are not supported yet "
            f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})")
    if name != "ActorCriticPolicy":
        raise ModelLoadError(
            f"--model {path}: policy class {name} is not supported yet (supported: "
            f"MlpPolicy of {', '.join(SUPPORTED_ALGORITHMS)})")
    if "clip_range" in data:
        return "PPO"
    if "cg_max_steps" in data:
        return "TRPO"
    return "A2C"


def _algorithm_class(algorithm: str) -> Any:
    if algorithm == "TRPO":
        from sb3_contrib import TRPO
        return TRPO
    import stable_baselines3
    return getattr(stable_baselines3, algorithm)


def check_spaces(path: Path, observation_space: Any, action_space: Any) -> None:
    import gymnasium
    import numpy as np

    if not isinstance(observation_space, gymnasium.spaces.Box) or not np.issubdtype(
            observation_space.dtype, np.floating):
        raise ModelLoadError(
            f"--model {path}: observation space {observation_space} is not supported yet "
            "(supported: a floating-point Box)")
    if not isinstance(action_space, gymnasium.spaces.Box):
        raise ModelLoadError(
            f"--model {path}: action space {action_space} is not supported yet "
            "(supported: Box)")


def load_model(path: str | Path, *, trust_code: bool = False) -> LoadedModel:
    """Load an SB3 model for inference on the CPU, unpickling only allow-listed classes."""
    path = Path(path)
    data = read_data(path)
    missing = [k for k in ("observation_space", "action_space", "policy_class") if k not in data]
    if missing:
        raise ModelLoadError(
            f"--model {path}: 'data' lacks {', '.join(missing)}, so it is not an SB3 model; "
            "pass the .zip written by model.save()")
    if trust_code:
        objects = None
        policy_class = _trusted_policy_class(path, data)
    else:
        objects = safe_custom_objects(path, data)
        policy_class = objects.get("policy_class")
    algorithm = detect_algorithm(path, data, policy_class)
    try:
        sb3 = _algorithm_class(algorithm).load(path, device="cpu", custom_objects=objects)
    except Exception as exc:
        raise ModelLoadError(
            f"--model {path}: Stable-Baselines3 could not load it as {algorithm} "
            f"({type(exc).__name__}: {exc}); re-save the model with model.save()") from None
    check_spaces(path, sb3.observation_space, sb3.action_space)
    return LoadedModel(path=path, algorithm=algorithm, sb3=sb3)


def _trusted_policy_class(path: Path, data: dict) -> Any:
    """The policy class, unpickled by cloudpickle: only with --trust-model-code."""
    import cloudpickle

    try:
        return cloudpickle.loads(base64.b64decode(data["policy_class"][":serialized:"]))
    except Exception as exc:
        raise ModelLoadError(f"--model {path}: 'policy_class' cannot be read ({exc})") from None
