"""The nine metadata entries of POLICY_ONNX_SPEC: how the exporter writes them and how they are judged.

Each checker takes the entry's value and the artifact and returns the problems it finds (an empty
list means well-formed and consistent). Keys are the slugs of the META clauses that check them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable, NamedTuple

import numpy as np

POLICY_VERSION = "1.0.0"
FRAMEWORK = "stable-baselines3"
TRANSFORMS = ("none", "clip", "tanh")
BOOLEANS = ("true", "false")


def describe_space(space) -> dict:
    """The `action_space` JSON object of a gymnasium action space."""
    kind = type(space).__name__
    if kind == "Discrete":
        return {"type": kind, "n": int(space.n), "start": int(space.start)}
    if kind == "MultiDiscrete":
        return {"type": kind, "nvec": [int(n) for n in np.asarray(space.nvec).reshape(-1)]}
    if kind == "MultiBinary":
        return {"type": kind, "n": int(np.prod(space.shape))}
    return {"type": "Box", "shape": [int(d) for d in space.shape], "dtype": "float32",
            "low": [float(v) for v in np.asarray(space.low, np.float64).reshape(-1)],
            "high": [float(v) for v in np.asarray(space.high, np.float64).reshape(-1)]}


def build(action_space, transform: str, scale: np.ndarray, offset: np.ndarray,
          recurrent: bool = False) -> dict[str, str]:
    """The nine entries, in the spec's order."""
    def floats(values) -> str:
        return json.dumps([float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)])

    return {
        "clanker_policy_version": POLICY_VERSION,
        "action_space": json.dumps(describe_space(action_space)),
        "action_transform": transform,
        "action_scale": floats(scale),
        "action_offset": floats(offset),
        "training_framework": FRAMEWORK,
        "recurrent": "true" if recurrent else "false",
        "deterministic_mode": "true",
        "batch_inference": "true",
    }


KEYS = ("clanker_policy_version", "action_space", "action_transform", "action_scale",
        "action_offset", "training_framework", "recurrent", "deterministic_mode",
        "batch_inference")


def _json(value: str):
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at char {exc.pos})") from None


def number_array(value: str, length: int | None) -> np.ndarray:
    """A JSON array of finite numbers, of `length` elements when given; ValueError otherwise."""
    parsed = _json(value)
    if not isinstance(parsed, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in parsed):
        raise ValueError(f"not a JSON array of numbers: {value!r}")
    array = np.asarray(parsed, dtype=np.float64)
    if length is not None and array.size != length:
        raise ValueError(f"has {array.size} numbers, but act_dim is {length}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"has non-finite numbers: {value!r}")
    return array


class DeclaredBox(NamedTuple):
    shape: tuple[int, ...]
    low: np.ndarray  # flattened, float64
    high: np.ndarray


def parse_box(value: str, act_dim: int | None) -> DeclaredBox:
    """A well-formed Box `action_space` entry; ValueError naming the defect otherwise."""
    space = _json(value)
    if not isinstance(space, dict):
        raise ValueError("not a JSON object")
    missing = [k for k in ("type", "shape", "dtype", "low", "high") if k not in space]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if space["type"] != "Box":
        raise ValueError(f"type is {space['type']!r}, but a float32 action output is a 'Box'")
    shape = space["shape"]
    if not (isinstance(shape, list) and shape and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise ValueError(f"shape {shape!r} is not a list of positive integers")
    size = math.prod(shape)
    if act_dim is not None and size != act_dim:
        raise ValueError(f"shape {shape} has {size} elements, but the output's act_dim is {act_dim}")
    if space["dtype"] != "float32":
        raise ValueError(f"dtype is {space['dtype']!r}, but the output is float32")
    low = number_array(json.dumps(np.asarray(space["low"]).reshape(-1).tolist()), size)
    high = number_array(json.dumps(np.asarray(space["high"]).reshape(-1).tolist()), size)
    if np.any(low > high):
        raise ValueError(f"low > high at index {int(np.argmax(low > high))}")
    return DeclaredBox(tuple(shape), low, high)


DISCRETE_FIELDS = {"Discrete": ("n", "start"), "MultiDiscrete": ("nvec",), "MultiBinary": ("n",)}


def parse_discrete(value: str) -> dict:
    """A well-formed discrete `action_space` entry; ValueError naming the defect otherwise."""
    space = _json(value)
    if not isinstance(space, dict):
        raise ValueError("not a JSON object")
    kind = space.get("type")
    if kind not in DISCRETE_FIELDS:
        raise ValueError(f"type is {kind!r}, not one of {', '.join(DISCRETE_FIELDS)}")
    missing = [k for k in DISCRETE_FIELDS[kind] if k not in space]
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")

    def positive(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    if kind == "MultiDiscrete":
        if not (isinstance(space["nvec"], list) and space["nvec"]
                and all(positive(n) for n in space["nvec"])):
            raise ValueError(f"nvec {space['nvec']!r} is not a list of positive integers")
    elif not positive(space["n"]):
        raise ValueError(f"n {space['n']!r} is not a positive integer")
    if kind == "Discrete" and not (isinstance(space["start"], int)
                                   and not isinstance(space["start"], bool)):
        raise ValueError(f"start {space['start']!r} is not an integer")
    return space


def _version(value: str, artifact) -> list[str]:
    match = re.fullmatch(r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)([-+][0-9A-Za-z.+-]+)?", value)
    if not match:
        return [f"{value!r} is not a semantic version MAJOR.MINOR.PATCH"]
    if match.group(1) != "1":
        return [f"major version {match.group(1)} is not 1 (this suite checks POLICY_ONNX_SPEC 1.x)"]
    return []


def _parses(parse: Callable[[str, int | None], object]) -> Callable[[str, object], list[str]]:
    """A checker from a parser that raises ValueError naming the defect."""
    def check(value: str, artifact) -> list[str]:
        try:
            parse(value, artifact.act_dim)
        except ValueError as exc:
            return [str(exc)]
        return []
    return check


def _transform(value: str, artifact) -> list[str]:
    return [] if value in TRANSFORMS else [f"{value!r} is not one of {', '.join(TRANSFORMS)}"]


def _framework(value: str, artifact) -> list[str]:
    return [] if value == FRAMEWORK else [f"{value!r} is not {FRAMEWORK!r}"]


def _boolean(value: str) -> list[str]:
    return [] if value in BOOLEANS else [f"{value!r} is not the string \"true\" or \"false\""]


def _agrees(value: str, truth: bool, what: str) -> list[str]:
    problems = _boolean(value)
    expected = "true" if truth else "false"
    if not problems and value != expected:
        problems.append(f"says {value!r}, but {what}: must be {expected!r}")
    return problems


def _recurrent(value: str, artifact) -> list[str]:
    state = artifact.has_recurrent_state
    return _agrees(value, state, "the graph " + ("has" if state else "has no") + " recurrent state")


def _deterministic(value: str, artifact) -> list[str]:
    return _boolean(value)


def _batch(value: str, artifact) -> list[str]:
    dynamic = artifact.batch_dynamic
    return _agrees(value, dynamic, "the batch dimension of obs is "
                   + ("symbolic" if dynamic else "fixed"))


CHECKS: dict[str, Callable[[str, object], list[str]]] = {
    "clanker_policy_version": _version,
    "action_space": _parses(parse_box),
    "action_transform": _transform,
    "action_scale": _parses(number_array),
    "action_offset": _parses(number_array),
    "training_framework": _framework,
    "recurrent": _recurrent,
    "deterministic_mode": _deterministic,
    "batch_inference": _batch,
}
assert tuple(CHECKS) == KEYS


def key_problems(key: str, artifact) -> list[str]:
    """Everything wrong with metadata entry `key` of the artifact: presence, form, consistency."""
    values = artifact.metadata.get(key, [])
    if not values:
        return [f"metadata key {key!r} is missing"]
    if len(values) > 1:
        return [f"metadata key {key!r} is present {len(values)} times, must be exactly once"]
    return [f"{key} = {values[0]!r}: {p}" for p in CHECKS[key](values[0], artifact)]
