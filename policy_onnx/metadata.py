"""The nine metadata entries of POLICY_ONNX_SPEC: how the exporter writes them and how they are judged.

Their grammar is the JSON Schema published beside the spec (POLICY_ONNX_METADATA.schema.json),
applied here with the `jsonschema` validator; versions are parsed by `semver`. JSON values are
judged as written: a duplicate object key, or NaN/Infinity (not JSON), is a defect, not something
to normalize away. What a schema cannot say (lengths equal to act_dim, low <= high, agreement with
the graph) is checked in code. Each checker takes the entry's value and the artifact and returns
the problems it finds (an empty list means well-formed and consistent).
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from .spec import SPEC_VERSION

SCHEMA_PATH = Path(__file__).resolve().parent / "POLICY_ONNX_METADATA.schema.json"

# `clanker_policy_version` names the version of the spec an artifact was exported to.
POLICY_VERSION = SPEC_VERSION
FRAMEWORK = "stable-baselines3"
TRANSFORMS = ("none", "clip", "tanh")


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
          recurrent: bool = False, observation: dict | None = None) -> dict[str, str]:
    """The nine entries, in the spec's order, and the `observation_space` entry when given
    (image and dict observations)."""
    def floats(values) -> str:
        return json.dumps([float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)])

    described = {OBSERVATION_KEY: json.dumps(observation)} if observation is not None else {}
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
        **described,
    }


OBSERVATION_KEY = "observation_space"  # the tenth entry: image and dict observations
KEYS = ("clanker_policy_version", "action_space", "action_transform", "action_scale",
        "action_offset", "training_framework", "recurrent", "deterministic_mode",
        "batch_inference")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [key for key, _ in pairs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"the JSON object has the key {duplicated[0]!r} more than once (parsers "
                         "disagree on which value wins)")
    return dict(pairs)


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON (a number must be finite)")


def _json(value: str):
    try:
        return json.loads(value, object_pairs_hook=_no_duplicate_keys, parse_constant=_not_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at char {exc.pos})") from None


@cache
def _validator(definition: str):
    """A validator of the published schema's definition `definition`."""
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(
        {"$schema": schema["$schema"], "$defs": schema["$defs"],
         "$ref": f"#/$defs/{definition}"})


def conform(document, definition: str) -> None:
    """ValueError naming the first way `document` breaks the schema's `definition`."""
    import jsonschema

    error = jsonschema.exceptions.best_match(_validator(definition).iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path)
        raise ValueError(f"{where + ': ' if where else ''}{error.message} (schema: "
                         f"#/$defs/{definition})")


def number_array(value: str, length: int | None) -> np.ndarray:
    """A flat JSON array of finite numbers, of `length` elements when given; ValueError
    otherwise."""
    parsed = _json(value)
    conform(parsed, "number_list")
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
    if isinstance(space, dict) and space.get("type") != "Box":
        raise ValueError(f"type is {space.get('type')!r}, but a float32 action output is a 'Box'")
    conform(space, "box")
    shape = space["shape"]
    size = math.prod(shape)
    if act_dim is not None and size != act_dim:
        raise ValueError(f"shape {shape} has {size} elements, but the output's act_dim is {act_dim}")
    low = number_array(json.dumps(space["low"]), size)
    high = number_array(json.dumps(space["high"]), size)
    if np.any(low > high):
        raise ValueError(f"low > high at index {int(np.argmax(low > high))}")
    return DeclaredBox(tuple(shape), low, high)


DISCRETE_FIELDS = {"Discrete": ("n", "start"), "MultiDiscrete": ("nvec",), "MultiBinary": ("n",)}


def parse_discrete(value: str) -> dict:
    """A well-formed discrete `action_space` entry; ValueError naming the defect otherwise."""
    space = _json(value)
    kind = space.get("type") if isinstance(space, dict) else None
    if kind not in DISCRETE_FIELDS:
        raise ValueError(f"type is {kind!r}, not one of {', '.join(DISCRETE_FIELDS)}")
    conform(space, {"Discrete": "discrete", "MultiDiscrete": "multi_discrete",
                    "MultiBinary": "multi_binary"}[kind])
    return space


def _entries(space: dict) -> list[tuple[str | None, dict]]:
    """(key, space) of each entry of a declared observation space (key None: not a Dict)."""
    if space["type"] == "Dict":
        return [(entry["key"], entry["space"]) for entry in space["spaces"]]
    return [(None, space)]


def declared_bounds(value, size: int, unbounded: float = np.nan) -> np.ndarray:
    """The `low` or `high` of a declared observation Box, one float64 per element: a single
    number stands for every element; null (unbounded) becomes `unbounded`."""
    values = value if isinstance(value, list) else [value] * size
    return np.asarray([unbounded if v is None else v for v in values], dtype=np.float64)


def parse_observation_space(value: str) -> dict:
    """A well-formed `observation_space` entry; ValueError naming the defect otherwise."""
    space = _json(value)
    conform(space, "observation_space")
    entries = _entries(space)
    keys = [key for key, _ in entries]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"the Dict has the key {repeated[0]!r} more than once")
    layouts = set()
    for key, entry in entries:
        where = f"entry {key!r}: " if key is not None else ""
        if entry["type"] != "Box":
            continue
        size = math.prod(entry["shape"])
        low, high = (declared_bounds(entry[name], size) for name in ("low", "high"))
        for name, bound in (("low", low), ("high", high)):
            if bound.size != size:
                raise ValueError(f"{where}{name} has {bound.size} numbers for shape "
                                 f"{entry['shape']} ({size} elements)")
        if np.any(np.nan_to_num(low, nan=-np.inf) > np.nan_to_num(high, nan=np.inf)):
            raise ValueError(f"{where}low > high")
        image = (entry["dtype"] == "uint8" and len(entry["shape"]) == 3
                 and np.all(low == 0) and np.all(high == 255))
        if image != ("layout" in entry):
            raise ValueError(f"{where}" + ("an image (uint8, rank 3, 0..255) must say its "
                                           "layout, HWC or CHW" if image else
                                           "layout is for images (uint8, rank 3, 0..255) only"))
        if image:
            layouts.add(entry["layout"])
    if len(layouts) > 1:
        raise ValueError("the images are declared in different layouts")
    return space


def observation_size(space: dict) -> int:
    """The flat size of a declared observation space: obs_dim (gymnasium.spaces.flatdim)."""
    sizes = {"Box": lambda e: math.prod(e["shape"]), "Discrete": lambda e: e["n"],
             "MultiDiscrete": lambda e: sum(e["nvec"]), "MultiBinary": lambda e: e["n"]}
    return sum(sizes[entry["type"]](entry) for _, entry in _entries(space))


def image_layout(space: dict) -> str | None:
    """The layout a declared observation space feeds its images in (None: no image)."""
    return next((e["layout"] for _, e in _entries(space) if "layout" in e), None)


def observation_differences(declared: dict, expected: dict) -> list[str]:
    """How a declared observation space differs from the expected one, entry by entry (bounds
    compared as float32; an empty list: the same)."""
    mine, theirs = _entries(declared), _entries(expected)
    if [k for k, _ in mine] != [k for k, _ in theirs]:
        return [f"the entries are {[k for k, _ in mine]}, the model's are "
                f"{[k for k, _ in theirs]} (in this order)"]
    problems = []
    for (key, got), (_, want) in zip(mine, theirs, strict=True):
        where = f"entry {key!r}: " if key is not None else ""
        if got["type"] == want["type"] == "Box":
            size = math.prod(want["shape"])
            for name in ("shape", "dtype", "layout"):
                if got.get(name) != want.get(name):
                    problems.append(f"{where}{name} is {got.get(name)!r}, the model's "
                                    f"{want.get(name)!r}")
            for name in ("low", "high") if not problems else ():
                if not np.array_equal(np.float32(declared_bounds(got[name], size)),
                                      np.float32(declared_bounds(want[name], size)),
                                      equal_nan=True):
                    problems.append(f"{where}{name} is {got[name]}, the model's {want[name]}")
        elif {k: got.get(k) for k in want} != want:
            problems.append(f"{where}declares {got}, the model's is {want}")
    return problems


def _version(value: str, artifact) -> list[str]:
    import semver

    try:
        version = semver.Version.parse(value)
    except (ValueError, TypeError):
        return [f"{value!r} is not a semantic version (semver 2.0.0: MAJOR.MINOR.PATCH, "
                "optionally -PRERELEASE and +BUILD)"]
    if version.major != 1:
        return [f"major version {version.major} is not 1 (this suite checks POLICY_ONNX_SPEC 1.x)"]
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


def _schema(definition: str) -> Callable[[str, object], list[str]]:
    """A checker of a plain string entry against the schema's `definition`."""
    return _parses(lambda value, act_dim: conform(value, definition))


def _agrees(value: str, artifact, truth: bool, what: str) -> list[str]:
    problems = _schema("string_boolean")(value, artifact)
    expected = "true" if truth else "false"
    if not problems and value != expected:
        problems.append(f"says {value!r}, but {what}: must be {expected!r}")
    return problems


def _recurrent(value: str, artifact) -> list[str]:
    state = artifact.has_recurrent_state
    return _agrees(value, artifact, state,
                   "the graph " + ("has" if state else "has no") + " recurrent state")


def _batch(value: str, artifact) -> list[str]:
    dynamic = artifact.batch_dynamic
    return _agrees(value, artifact, dynamic, "the batch dimension of obs is "
                   + ("symbolic" if dynamic else "fixed"))


CHECKS: dict[str, Callable[[str, object], list[str]]] = {
    "clanker_policy_version": _version,
    "action_space": _parses(parse_box),
    "action_transform": _schema("action_transform"),
    "action_scale": _parses(number_array),
    "action_offset": _parses(number_array),
    "training_framework": _schema("training_framework"),
    "recurrent": _recurrent,
    "deterministic_mode": _schema("string_boolean"),
    "batch_inference": _batch,
    OBSERVATION_KEY: _parses(lambda value, act_dim: parse_observation_space(value)),
}
assert tuple(CHECKS) == (*KEYS, OBSERVATION_KEY)


def key_problems(key: str, artifact) -> list[str]:
    """Everything wrong with metadata entry `key` of the artifact: presence, form, consistency."""
    values = artifact.metadata.get(key, [])
    if not values:
        return [f"metadata key {key!r} is missing"]
    if len(values) > 1:
        return [f"metadata key {key!r} is present {len(values)} times, must be exactly once"]
    return [f"{key} = {values[0]!r}: {p}" for p in CHECKS[key](values[0], artifact)]
