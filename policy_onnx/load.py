"""Open an SB3 model zip without running code from it.

The only module that knows SB3's file format. `PPO.load` unpickles every `:serialized:` entry of
the zip's `data` JSON with cloudpickle, so a crafted zip runs code on load. Here only the entries
inference needs are unpickled, through an allow-list; every other serialized entry is replaced by
a harmless default before SB3 sees it (SB3 does not deserialize keys given as `custom_objects`).
"""

from __future__ import annotations

import base64
import importlib
import inspect
import io
import json
import math
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


class ModelLoadError(Exception):
    """A model file that cannot be checked; the message names the problem and the fix."""


SUPPORTED_ALGORITHMS = ("PPO", "A2C", "TRPO", "SAC", "TD3", "DDPG", "TQC", "CrossQ", "DQN",
                        "QR-DQN", "ARS", "MaskablePPO", "RecurrentPPO")
# The algorithms of sb3-contrib (the others are Stable-Baselines3's).
CONTRIB_ALGORITHMS = ("TRPO", "TQC", "CrossQ", "QR-DQN", "ARS", "MaskablePPO", "RecurrentPPO")

# Resource limits: refuse, rather than attempt, what would exhaust memory.
MAX_DATA_BYTES = 64 * 2**20  # the `data` JSON entry, uncompressed
MAX_ZIP_BYTES = 2 * 2**30  # all entries, uncompressed
MAX_SPACE_ELEMENTS = 2**20  # one observation or action (an 84x84x3 image is 21,168)
# The network policy_kwargs describe, estimated before SB3 builds it: at most this many
# parameters, and no more than this many times the weights the zip stores (plus some slack).
MAX_PARAMETERS = 50_000_000
MAX_PARAMETERS_PER_STORED = 16
PARAMETER_SLACK = 1_000_000

# Entries inference needs; unpickled through the allow-list.
NEEDED_KEYS = ("observation_space", "action_space", "policy_class", "policy_kwargs")
# Stand-ins for serialized entries the allow-list refuses and inference does not need, where
# SB3's set-up rejects None: schedules take a number, train_freq an integer.
DEFAULTS = {"learning_rate": 0.0, "lr_schedule": 0.0, "clip_range": 0.0, "clip_range_vf": 0.0,
            "exploration_schedule": 0.0, "train_freq": 1}

# Policy classes that belong to one algorithm (ActorCriticPolicy and TD3Policy are shared).
_POLICY_ALGORITHMS = {
    "SACPolicy": "SAC", "TQCPolicy": "TQC", "DQNPolicy": "DQN", "QRDQNPolicy": "QR-DQN",
    "MaskableActorCriticPolicy": "MaskablePPO", "RecurrentActorCriticPolicy": "RecurrentPPO",
    "ARSPolicy": "ARS", "ARSLinearPolicy": "ARS", "CrossQPolicy": "CrossQ",
}

# Globals resolved as they are: numpy's array, scalar and RNG reconstruction, and torch.device
# (SB3 1.x saved `device` in policy_kwargs; the constructor only parses a string).
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"), ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.random._pickle", "__generator_ctor"), ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__randomstate_ctor"), ("numpy.random._pcg64", "PCG64"),
    ("numpy.random.bit_generator", "SeedSequence"),
    ("numpy.random.bit_generator", "__pyx_unpickle_SeedSequence"),
    ("collections", "OrderedDict"), ("torch", "device"),
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


# Modules of pickles written before today's packages, by their current names: numpy 1.x wrote
# numpy.core; SB3 1.x saved the spaces of gym, which gymnasium's classes read (their
# __setstate__ accepts the legacy state). Nothing is imported from gym.
LEGACY_MODULES = (("numpy.core", "numpy._core"), ("gym.spaces", "gymnasium.spaces"))


def legacy_module(module: str) -> str:
    for old, new in LEGACY_MODULES:
        if module == old or module.startswith(old + "."):
            return new + module[len(old):]
    return module


class RefusedGlobal(Exception):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualified_name = f"{module}.{name}"


class AllowListUnpickler(pickle.Unpickler):
    """Resolves only the numpy reconstruction helpers and the classes inference needs."""

    def find_class(self, module: str, name: str) -> Any:
        module = legacy_module(module)
        if (module, name) in _ALLOWED_GLOBALS:
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


# How a policy of each algorithm is called (spec.STRUCTURES); "plain" when not listed.
STRUCTURES = {"MaskablePPO": "masked", "RecurrentPPO": "recurrent"}


@dataclass
class LoadedModel:
    path: Path
    algorithm: str
    sb3: Any  # the stable_baselines3 BaseAlgorithm
    normalization: Any = None  # the VecNormalize statistics it was trained behind (normalization.py)
    image_layout: str = "HWC"  # the layout a runtime feeds images in (observations.py)
    # An SB3 1.0-era HER agent (the `HER` class, before HerReplayBuffer): its Box observation is
    # ObsDictWrapper's flattening of the goal dict, these keys concatenated; None otherwise.
    goal_keys: tuple[str, ...] | None = None

    @property
    def structure(self) -> str:
        return STRUCTURES.get(self.algorithm, "plain")

    @property
    def layout(self):
        """Where each entry of the observation lies in the rows the artifact takes."""
        from .observations import ObservationLayout

        return ObservationLayout(self.sb3.observation_space, self.image_layout)


def read_zip(path: Path) -> tuple[dict, dict[str, int]]:
    """The `data` JSON of an SB3 zip and the uncompressed size of every entry, with cheap checks
    that name what is wrong."""
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
            sizes = {info.filename: info.file_size for info in archive.infolist()}
            _check_sizes(path, sizes)
            data = json.loads(archive.read("data"))
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ModelLoadError(f"--model {path}: unreadable SB3 'data' entry ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"--model {path}: 'data' is not a JSON object; {fix}")
    return data, sizes


def _check_sizes(path: Path, sizes: dict[str, int]) -> None:
    total = sum(sizes.values())
    if sizes["data"] > MAX_DATA_BYTES or total > MAX_ZIP_BYTES:
        raise ModelLoadError(
            f"--model {path}: refused: the zip unpacks to {total:,} bytes ('data': "
            f"{sizes['data']:,}), over the suite's limits of "
            f"{MAX_ZIP_BYTES:,} and {MAX_DATA_BYTES:,}; check that this is the model file (an SB3 "
            "policy zip is far smaller)")


def _is_serialized(value: Any) -> bool:
    return isinstance(value, dict) and ":serialized:" in value


def inference_objects(path: Path, data: dict, trust_code: bool) -> dict[str, Any]:
    """Values for the serialized entries, handed to SB3 as `custom_objects`.

    By default every serialized entry gets one, so that SB3 unpickles none of them itself: the
    entries inference needs through the allow-list, the others a harmless default. With
    `trust_code`, the needed entries are unpickled by cloudpickle and SB3 unpickles the rest.
    """
    objects: dict[str, Any] = {}
    for key, value in data.items():
        if not _is_serialized(value):
            continue
        if key in NEEDED_KEYS:
            objects[key] = _unpickle_needed(path, key, value[":serialized:"], trust_code)
        elif not trust_code:
            try:
                objects[key] = safe_unpickle(value[":serialized:"])
            except Exception:  # refused or unreadable: never run, replaced
                objects[key] = DEFAULTS.get(key)
    if "buffer_size" in data:  # an off-policy replay buffer is not needed for inference
        objects["buffer_size"] = 1
    if "replay_buffer_class" in data:
        # HER agents name HerReplayBuffer, whose set-up demands an environment: the default
        # buffer (none given) needs none, and its options are the named buffer's.
        objects["replay_buffer_class"] = None
        objects["replay_buffer_kwargs"] = {}
    policy_kwargs = objects.get("policy_kwargs", data.get("policy_kwargs"))
    if policy_kwargs is None:
        policy_kwargs = {}
    if isinstance(policy_kwargs, dict) and isinstance(objects["policy_class"], type) and \
            "optimizer_class" in inspect.signature(objects["policy_class"]).parameters:
        policy_kwargs = {**policy_kwargs, "optimizer_class": NoOptimizer}  # ARS has none
    objects["policy_kwargs"] = policy_kwargs
    return objects


class NoOptimizer:
    """Stands in for the training optimizer SB3 builds with every policy and restores from the
    zip: inference needs none, and building a torch optimizer imports torch._dynamo (1.5 s)."""

    def __init__(self, params, *args, **kwargs):
        pass

    def load_state_dict(self, state_dict, *args, **kwargs):
        pass


def _unpickle_needed(path: Path, key: str, payload: str, trust_code: bool) -> Any:
    try:
        if trust_code:
            import cloudpickle

            with warnings.catch_warnings():  # zips saved under numpy 1.x name numpy.core
                warnings.filterwarnings("ignore", "numpy.core", DeprecationWarning)
                return cloudpickle.loads(base64.b64decode(payload))
        return safe_unpickle(payload)
    except RefusedGlobal as refused:
        problem = (f"refused to unpickle {refused.qualified_name} from '{key}': it is not a "
                   "class inference needs, and loading it could run code. If you trust this "
                   "file, rerun with --trust-model-code")
    except Exception as exc:  # corrupt payloads: base64, pickle or reconstruction errors
        problem = (f"'{key}' cannot be read ({type(exc).__name__}: {exc}); re-save the model "
                   "with model.save()")
    raise ModelLoadError(f"--model {path}: {problem}")


def _sizes(value: Any) -> list[list[int]]:
    """The layer-width lists of a net_arch: [64, 64], dict(pi=[...], vf=[...]) or SB3 1.x's
    [dict(pi=..., vf=...)] (and [64, dict(...)] of older ones)."""
    if isinstance(value, dict):
        return [width for part in value.values() for width in _sizes(part)]
    if isinstance(value, (list, tuple)):
        ints = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
        nested = [w for v in value if isinstance(v, (dict, list, tuple)) for w in _sizes(v)]
        return ([ints] if ints else []) + nested
    return []


def estimated_parameters(policy_kwargs: dict, observation_space: Any, action_space: Any
                         ) -> int:
    """About how many parameters the network described by `policy_kwargs` and the spaces has
    (an upper estimate: every network SB3 may build twice over, targets included)."""
    def number(key: str, default: int) -> int:
        return _integer(policy_kwargs.get(key, default), default)

    obs = _elements(observation_space)
    extractor = policy_kwargs.get("features_extractor_kwargs")
    extractor = extractor if isinstance(extractor, dict) else {}
    features = number("features_dim", 0) or extractor.get("features_dim", 0) or \
        _extracted(observation_space, extractor)
    outputs = max(math.prod(getattr(action_space, "shape", ()) or (1,)),
                  int(getattr(action_space, "n", 1) or 1)) * max(1, number("n_quantiles", 1))
    lstm = number("lstm_hidden_size", 0)
    layers = number("n_lstm_layers", 1)
    total = lstm and 2 * layers * 4 * lstm * (max(features, lstm) + lstm + 2)
    inputs = lstm or features
    for widths in _sizes(policy_kwargs.get("net_arch", [])) or [[]]:
        chain = [inputs, *widths, outputs]
        total += sum((a + 1) * b for a, b in zip(chain, chain[1:]))
    copies = 2 * (2 + max(1, number("n_critics", 2)))  # actor, critics, their targets
    return copies * total + (features * obs if features != obs else 0)


def _integer(value: Any, default: int) -> int:
    """`value` if it is an integer (a bool is not), else `default`."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _extracted(space: Any, extractor: dict) -> int:
    """The features SB3's default extractor makes of an observation: NatureCNN's features_dim
    for an image, cnn_output_dim per image of a Dict plus its other entries flattened, else the
    observation flattened."""
    from .observations import is_image

    if hasattr(space, "spaces") and isinstance(space.spaces, dict):
        return sum(_integer(extractor.get("cnn_output_dim"), 256) if is_image(sub)
                   else _elements(sub) for sub in space.spaces.values())
    return 512 if is_image(space) else _elements(space)


def check_network_size(path: Path, archive_sizes: dict[str, int], objects: dict) -> None:
    """Refuse, before anything is built, a network out of proportion with the stored weights
    or over the budget: SB3 allocates (and initializes) whatever policy_kwargs describe."""
    estimate = estimated_parameters(objects["policy_kwargs"], objects["observation_space"],
                                    objects["action_space"])
    stored = sum(size for name, size in archive_sizes.items() if name.endswith(".pth")) // 4
    limit = min(MAX_PARAMETERS, MAX_PARAMETERS_PER_STORED * stored + PARAMETER_SLACK)
    if estimate > limit:
        raise ModelLoadError(
            f"--model {path}: refused: policy_kwargs describe a network of about "
            f"{estimate:,} parameters, but the zip stores weights for about {stored:,} and the "
            f"suite builds at most {limit:,} (at most {MAX_PARAMETERS:,}, and "
            f"{MAX_PARAMETERS_PER_STORED}x what is stored); check that this is the model file")


def check_objects(path: Path, objects: dict[str, Any]) -> None:
    """What unpickling returned has the types and attributes SB3 relies on: a policy class,
    two spaces whose state was restored, keyword arguments that are a mapping."""
    import gymnasium

    def refuse(key: str, problem: str):
        raise ModelLoadError(f"--model {path}: refused: '{key}' {problem}; re-save the model "
                             "with model.save()")

    if not isinstance(objects.get("policy_class"), type):
        refuse("policy_class", f"is {type(objects.get('policy_class')).__name__}, not a class")
    for key in ("observation_space", "action_space"):
        space = objects.get(key)
        if not isinstance(space, gymnasium.spaces.Space):
            refuse(key, f"is {type(space).__name__}, not a gymnasium space")
        try:
            shape, dtype = space.shape, space.dtype
            if isinstance(space, gymnasium.spaces.Box):
                bounds = (np.asarray(space.low), np.asarray(space.high))
                if any(b.dtype.kind not in "fiu" for b in bounds):
                    refuse(key, "has bounds that are not numbers")
        except AttributeError as exc:
            refuse(key, f"was unpickled without its state ({exc})")
        if shape is not None and not all(isinstance(d, (int, np.integer)) and d >= 0
                                         for d in shape):
            refuse(key, f"has the shape {shape!r}")
        if dtype is not None and not isinstance(dtype, np.dtype):
            refuse(key, f"has the dtype {dtype!r}")
    if not isinstance(objects.get("policy_kwargs"), dict):
        refuse("policy_kwargs", f"is a {type(objects.get('policy_kwargs')).__name__}, not a "
               "mapping of keyword arguments")


def detect_algorithm(path: Path, data: dict, policy_class: Any) -> str:
    """The algorithm of a policy class (its Mlp, Cnn and MultiInput variants alike, by the
    first class of its family in its MRO)."""
    family = ("ActorCriticPolicy", "TD3Policy", *_POLICY_ALGORITHMS)
    name = next((c.__name__ for c in getattr(policy_class, "__mro__", ())
                 if c.__name__ in family), getattr(policy_class, "__name__", repr(policy_class)))
    if name == "ActorCriticPolicy":
        if "clip_range" in data:
            return "PPO"
        return "TRPO" if "cg_max_steps" in data else "A2C"
    if name in _POLICY_ALGORITHMS:
        return _POLICY_ALGORITHMS[name]
    if name == "TD3Policy":  # DDPG is TD3 with one policy update per step and no target noise
        return "DDPG" if data.get("policy_delay") == 1 and data.get("target_noise_clip") == 0 \
            else "TD3"
    raise ModelLoadError(
        f"--model {path}: policy class {name} is not supported yet (supported: the Mlp, Cnn "
        f"and MultiInput policies of {', '.join(SUPPORTED_ALGORITHMS)})")


def algorithm_class(algorithm: str) -> Any:
    if algorithm in CONTRIB_ALGORITHMS:
        import sb3_contrib
        return getattr(sb3_contrib, algorithm.replace("-", ""))
    import stable_baselines3
    return getattr(stable_baselines3, algorithm)


def check_spaces(path: Path, observation_space: Any, action_space: Any) -> None:
    """Supported, consistent and small enough to check, before any network is built."""
    import gymnasium
    import numpy as np

    check_observation_space(path, observation_space)
    spaces = gymnasium.spaces
    supported = isinstance(action_space, spaces.Box) or (
        isinstance(action_space, spaces.MultiBinary) and len(action_space.shape) == 1) or (
        isinstance(action_space, spaces.Discrete) and action_space.start == 0) or (
        isinstance(action_space, spaces.MultiDiscrete) and action_space.nvec.ndim == 1
        and not np.any(action_space.start))
    if not supported:
        raise ModelLoadError(
            f"--model {path}: action space {action_space} is not supported yet (supported: Box, "
            "Discrete and one-dimensional MultiDiscrete starting at 0, one-dimensional "
            "MultiBinary)")
    for name, space in (("observation", observation_space), ("action", action_space)):
        shape = tuple(space.shape or ())
        elements = _elements(space)
        if elements > MAX_SPACE_ELEMENTS:
            raise ModelLoadError(
                f"--model {path}: refused: the {name} space has {elements:,} elements, over the "
                f"suite's limit of {MAX_SPACE_ELEMENTS:,}; policies with observations this large "
                "are not supported")
        if isinstance(space, spaces.Box) and (np.shape(space.low) != shape
                                              or np.shape(space.high) != shape):
            raise ModelLoadError(
                f"--model {path}: the {name} space is inconsistent: shape {shape}, bounds of "
                f"shape {np.shape(space.low)} and {np.shape(space.high)}")


def check_observation_space(path: Path, space: Any) -> None:
    """A Box (floats, integers or an image), or a Dict of Box, Discrete (from 0), and
    one-dimensional MultiDiscrete (from 0) and MultiBinary entries: what SB3's extractors take
    and the suite draws."""
    import gymnasium

    spaces = gymnasium.spaces

    def supported(sub: Any, in_dict: bool) -> bool:
        if isinstance(sub, spaces.Box):
            return np.issubdtype(sub.dtype, np.floating) or np.issubdtype(sub.dtype, np.integer)
        if not in_dict:
            return False
        if isinstance(sub, spaces.Discrete):
            return sub.start == 0
        if isinstance(sub, (spaces.MultiDiscrete, spaces.MultiBinary)):
            starts = getattr(sub, "start", None)
            return len(sub.shape) == 1 and not np.any(starts if starts is not None else 0)
        return False

    if isinstance(space, spaces.Dict):
        bad = [f"{key}: {sub}" for key, sub in space.spaces.items() if not supported(sub, True)]
        if bad or not space.spaces:
            raise ModelLoadError(
                f"--model {path}: observation space {space} is not supported yet: "
                f"{'; '.join(bad) or 'no entries'} (a Dict's entries may be Box, Discrete and "
                "one-dimensional MultiDiscrete starting at 0, one-dimensional MultiBinary)")
    elif not supported(space, False):
        raise ModelLoadError(
            f"--model {path}: observation space {space} is not supported yet (supported: a Box "
            "of numbers, images included, or a Dict of Box, Discrete, MultiDiscrete and "
            "MultiBinary entries)")


def _elements(space: Any) -> int:
    """The elements of one observation or action (a Dict's entries summed)."""
    if hasattr(space, "spaces") and isinstance(space.spaces, dict):
        return sum(_elements(sub) for sub in space.spaces.values())
    return math.prod(space.shape or (1,))


def load_model(path: str | Path, *, trust_code: bool = False) -> LoadedModel:
    """Load an SB3 model for inference on the CPU, unpickling only allow-listed classes (or,
    with `trust_code`, everything)."""
    path = Path(path)
    data, sizes = read_zip(path)
    missing = [k for k in ("observation_space", "action_space", "policy_class")
               if not _is_serialized(data.get(k))]
    if missing:
        raise ModelLoadError(
            f"--model {path}: 'data' lacks {', '.join(missing)}, so it is not an SB3 model; "
            "pass the .zip written by model.save()")
    try:
        objects = inference_objects(path, data, trust_code)
        check_objects(path, objects)
        algorithm = detect_algorithm(path, data, objects["policy_class"])
        check_spaces(path, objects["observation_space"], objects["action_space"])
        check_network_size(path, sizes, objects)
    except ModelLoadError:
        raise
    except Exception as exc:  # whatever else a crafted file makes of the checks above
        raise ModelLoadError(
            f"--model {path}: refused: its entries are not what SB3 writes "
            f"({type(exc).__name__}: {_one_line(exc)}); re-save the model with model.save()"
        ) from None
    if algorithm == "MaskablePPO" and type(objects["action_space"]).__name__ not in (
            "Discrete", "MultiDiscrete"):
        raise ModelLoadError(f"--model {path}: MaskablePPO with {objects['action_space']} is "
                             "not supported yet (supported: Discrete, MultiDiscrete)")
    try:
        with warnings.catch_warnings():  # zips saved under numpy 1.x name numpy.core
            warnings.filterwarnings("ignore", "numpy.core", DeprecationWarning)
            sb3 = algorithm_class(algorithm).load(path, device="cpu", custom_objects=objects)
    except Exception as exc:
        raise ModelLoadError(
            f"--model {path}: Stable-Baselines3 could not load it as {algorithm} "
            f"({type(exc).__name__}: {_one_line(exc)}); re-save the model with model.save()"
        ) from None
    return LoadedModel(path=path, algorithm=algorithm, sb3=sb3, goal_keys=_goal_keys(data))


# SB3 1.0's ObsDictWrapper.convert_dict: the observation, then the desired goal.
FLATTENED_GOAL_KEYS = ("observation", "desired_goal")


def _goal_keys(data: dict) -> tuple[str, ...] | None:
    """The keys an SB3 1.0-era HER agent's observation concatenates: its `HER` class saved the
    wrapped model's class and the goal sampling options beside its parameters."""
    return FLATTENED_GOAL_KEYS if {"model_class", "goal_selection_strategy"} <= set(data) \
        else None


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
