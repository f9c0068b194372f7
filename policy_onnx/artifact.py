"""A read-only view of an ONNX policy file: graph facts, metadata, a runtime session, the final action.

"Final action" is what a POLICY_ONNX_SPEC runtime acts with: the output after the declared
`action_transform`, read as the reference runtime reads it (unknown or absent means none; scale
and offset default to 1 and 0; clip bounds default to +-1). The strict judgement of the metadata
is the META clauses' job; behaviour and parity judge the policy a runtime would actually run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx

from . import engines, metadata, spec
from .files import check_given_file


AUXILIARY_INPUTS = ("action_masks", "state_h", "state_c", "episode_start")
RECURRENT_OUTPUTS = ("next_state_h", "next_state_c")
MAX_ARTIFACT_BYTES = 2 * 2**30  # the file and its external data: far beyond any vector policy
SIZE_FIX = "check that this is the policy artifact (a vector policy is far smaller)"


# ONNX Runtime's threads per session: 0 lets it choose (one per core); a pytest-xdist worker,
# which shares the cores with the others, uses one.
SESSION_THREADS = 0


class ArtifactError(Exception):
    """An artifact that cannot be read or run; the message names the problem."""


@dataclass(frozen=True)
class TensorFacts:
    name: str
    elem_type: int
    dims: tuple  # int for a fixed size, str for a symbolic one, None when unknown

    @property
    def type_name(self) -> str:
        return onnx.TensorProto.DataType.Name(self.elem_type) if self.elem_type else "unknown"

    @property
    def numpy_dtype(self):
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)


def _tensor_facts(value_info: onnx.ValueInfoProto) -> TensorFacts:
    tensor = value_info.type.tensor_type
    dims = tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or None) if d.HasField(
            "dim_param") else None
        for d in tensor.shape.dim) if tensor.HasField("shape") else ()
    return TensorFacts(value_info.name, tensor.elem_type, dims)


def nodes_with_bodies(graph: onnx.GraphProto, inside: str = ""):
    """(node, the If/Loop/Scan node whose body holds it, as "Op 'name'"; "" in the main
    graph) for every node of `graph` and of the bodies of its nodes, theirs too."""
    for node in graph.node:
        yield node, inside
        for attribute in node.attribute:
            for body in (*([attribute.g] if attribute.HasField("g") else ()),
                         *attribute.graphs):
                yield from nodes_with_bodies(body, f"{node.op_type} "
                                                   f"'{node.name or node.output[0]}'")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_proto(path: Path) -> onnx.ModelProto:
    """The parsed ONNX model; ArtifactError naming the problem otherwise."""
    fix = "pass the .onnx file written by the exporter"
    check_given_file(path, f"--onnx {path}", MAX_ARTIFACT_BYTES, fix, ArtifactError, SIZE_FIX)
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ArtifactError(f"--onnx {path}: not an ONNX model ({type(exc).__name__}: {exc}); "
                            f"{fix}") from None
    if not proto.HasField("graph") or not proto.graph.output:
        raise ArtifactError(f"--onnx {path}: not an ONNX model (no graph with outputs); {fix}")
    _check_external_data(path, proto)
    return proto


def _check_external_data(path: Path, proto: onnx.ModelProto) -> None:
    """External data must stay inside the artifact's folder, and the total within the limit."""
    folder = path.parent.resolve()
    total = path.stat().st_size
    for tensor in proto.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise ArtifactError(
                f"--onnx {path}: initializer {tensor.name!r} keeps its data at {location!r}, "
                "outside the artifact's folder; the suite will not read it. Save the model as "
                "one file, or with its external data beside it")
        declared = int(info.get("length", 0) or 0)
        total += declared or (target.stat().st_size if target.is_file() else 0)
    if total > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"--onnx {path}: refused: {total:,} bytes with its external data, "
                            f"over the suite's limit of {MAX_ARTIFACT_BYTES:,}; {SIZE_FIX}")


def _engine_message(exc: Exception) -> str:
    """An engine's error on one line, without the backtrace a Rust engine appends (tract,
    with RUST_BACKTRACE set)."""
    return " ".join(str(exc).split("Stack backtrace:")[0].split())


class Artifact:
    def __init__(self, path: str | Path, engine: str = engines.ORT):
        self.path = Path(path)
        self.engine = engine  # what runs it (engines.py)
        self.proto = read_proto(self.path)
        self.sha256 = sha256(self.path)
        graph = self.proto.graph
        initializers = {i.name for i in graph.initializer}
        self.inputs = [_tensor_facts(v) for v in graph.input if v.name not in initializers]
        self.outputs = [_tensor_facts(v) for v in graph.output]
        self.metadata: dict[str, list[str]] = {}
        for prop in self.proto.metadata_props:
            self.metadata.setdefault(prop.key, []).append(prop.value)

    # --- graph facts ------------------------------------------------------------------------
    @property
    def external_tensors(self) -> list[tuple[str, str]]:
        """(initializer, file) for each tensor whose data lies outside the artifact's file."""
        return [(t.name, {e.key: e.value for e in t.external_data}.get("location", ""))
                for t in self.proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]

    @property
    def obs(self) -> TensorFacts | None:
        """The observation input: `obs`, or else the only required input other than masks."""
        named = [t for t in self.inputs if t.name == "obs"]
        others = [t for t in self.inputs if t.name not in AUXILIARY_INPUTS]
        return named[0] if named else (others[0] if len(others) == 1 else None)

    @property
    def masks(self) -> TensorFacts | None:
        """The action-mask input `action_masks`, if the graph has one."""
        return self.input_named("action_masks")

    def input_named(self, name: str) -> TensorFacts | None:
        return next((t for t in self.inputs if t.name == name), None)

    @property
    def structure(self) -> str:
        """plain, masked (an `action_masks` input) or recurrent (a `state_h` input)."""
        if self.masks is not None:
            return "masked"
        return "recurrent" if self.input_named("state_h") is not None else "plain"

    @property
    def action(self) -> TensorFacts | None:
        """The action output: `action`, or else the only output."""
        named = [t for t in self.outputs if t.name == "action"]
        return named[0] if named else (self.outputs[0] if len(self.outputs) == 1 else None)

    @staticmethod
    def _feature_dim(tensor: TensorFacts | None) -> int | None:
        if tensor is None or len(tensor.dims) != 2:
            return None
        dim = tensor.dims[1]
        return dim if isinstance(dim, int) and dim > 0 else None

    @property
    def obs_dim(self) -> int | None:
        return self._feature_dim(self.obs)

    @property
    def act_dim(self) -> int | None:
        """Output elements per row: dimension 1, or 1 for a `[batch]` (Discrete) output."""
        if self.action is not None and len(self.action.dims) == 1:
            return 1
        return self._feature_dim(self.action)

    @property
    def declared_kind(self) -> str:
        """The action space type the metadata declares; Box when it cannot be read."""
        try:
            kind = json.loads(self._entry("action_space") or "").get("type")
        except (ValueError, AttributeError):
            return "Box"
        return kind if kind in spec.ACTION_KINDS else "Box"

    @property
    def batch_dynamic(self) -> bool:
        return bool(self.obs and self.obs.dims and isinstance(self.obs.dims[0], str))

    @property
    def has_recurrent_state(self) -> bool:
        return self.structure == "recurrent" or (len(self.inputs) > 1 and len(self.outputs) > 1)

    # --- running it ---------------------------------------------------------------------------
    @cached_property
    def session(self):
        try:
            return engines.session(self.engine, self.path, SESSION_THREADS)
        except Exception as exc:
            # ORT prefixes its message with an error code, a source location and a C++ signature.
            cause = _engine_message(exc)
            cause = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", cause)
            cause = re.sub(r"\S+\.(?:cc|h):\d+ \S+\(.*?\) ", "", cause)
            if self.engine in engines.REFERENCES and not engines.operator_problems(self.proto):
                raise engines.ReferenceLimitation(f"{engines.label(self.engine)} cannot load "
                                                  f"this graph of standard operators: {cause}")
            raise ArtifactError(
                f"{engines.label(self.engine)} cannot load "
                f"{self.path}: {cause}. Export with standard ONNX operators, an IR version and "
                "opsets this runtime supports (torch's default exporter writes IR 10, opset 20)"
            ) from None

    def under(self, engine: str) -> Artifact:
        """The same artifact run by another engine."""
        other = copy.copy(self)
        other.engine = engine
        other.__dict__.pop("session", None)
        return other

    def run(self, obs: np.ndarray, masks: np.ndarray | None = None, *,
            one_row_each: bool = True) -> np.ndarray:
        """The action output for a batch of flattened observations (and action masks, all
        allowed unless given), as float64; unless told otherwise, an output without one row per
        observation is an ArtifactError."""
        if self.obs is None or self.action is None:
            raise ArtifactError(
                f"cannot tell the observation input and action output apart "
                f"(inputs {[t.name for t in self.inputs]}, outputs "
                f"{[t.name for t in self.outputs]})")
        feed = np.ascontiguousarray(obs, dtype=self.obs.numpy_dtype)
        feeds = {self.obs.name: feed, **self._zero_state(len(feed))}
        if self.masks is not None:
            if masks is None:
                width = self.masks.dims[1] if len(self.masks.dims) == 2 else None
                if not isinstance(width, int):
                    raise ArtifactError(f"action_masks has no static width: {self.masks.dims}")
                masks = np.ones((len(feed), width), dtype=bool)
            feeds[self.masks.name] = np.ascontiguousarray(masks, dtype=self.masks.numpy_dtype)
        (out,) = self._session_run([self.action.name], feeds, f"a batch of shape {feed.shape}")
        if one_row_each and (np.ndim(out) == 0 or len(out) != len(feed)):
            raise ArtifactError(f"{len(feed)} observations gave an action of shape "
                                f"{np.shape(out)}: not one row per observation (see BEH-01)")
        return np.asarray(out, dtype=np.float64)

    def _zero_state(self, batch: int) -> dict[str, np.ndarray]:
        """A recurrent graph's state inputs at the start of an episode."""
        if self.structure != "recurrent":
            return {}
        feeds = {}
        if self.input_named("episode_start") is not None:
            feeds["episode_start"] = np.ones(batch, dtype=np.float32)
        for name in ("state_h", "state_c"):
            tensor = self.input_named(name)
            layers, hidden = (tensor.dims[0], tensor.dims[2]) if len(tensor.dims) == 3 else (0, 0)
            if not (isinstance(layers, int) and isinstance(hidden, int)):
                raise ArtifactError(f"{name} is {list(tensor.dims)}, not [layers, batch, hidden] "
                                    "with static layers and hidden (see REC-01)")
            feeds[name] = np.zeros((layers, batch, hidden), dtype=np.float32)
        return feeds

    def step(self, obs: np.ndarray, state_h: np.ndarray, state_c: np.ndarray,
             episode_start: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of a recurrent graph: (action as float64, next_state_h, next_state_c)."""
        given = {"obs": obs, "state_h": state_h, "state_c": state_c,
                 "episode_start": episode_start}
        # Only what the graph takes: an artifact without episode_start simply never resets.
        feeds = {t.name: np.asarray(given[t.name], np.float32) for t in self.inputs
                 if t.name in given}
        action, next_h, next_c = self._session_run(["action", *RECURRENT_OUTPUTS], feeds,
                                                   "one recurrent step")
        return self.to_final(np.asarray(action, np.float64)), next_h, next_c

    def _session_run(self, outputs: list[str], feeds: dict, what: str) -> list:
        """session.run, with a runtime failure as a one-line ArtifactError."""
        session = self.session  # an ArtifactError of its own when the artifact cannot load
        try:
            return session.run(outputs, feeds)
        except Exception as exc:
            if self.engine in engines.REFERENCES and not isinstance(exc, engines.EngineDependent):
                raise engines.ReferenceLimitation(f"{engines.label(self.engine)} failed on "
                                                  f"{what}: {_engine_message(exc)}") from None
            raise ArtifactError(f"{engines.label(self.engine)} failed on {what}: "
                                f"{_engine_message(exc)}") from None

    # --- the declared action transform, read as a runtime reads it --------------------------
    def _entry(self, key: str) -> str | None:
        values = self.metadata.get(key)
        return values[0] if values else None

    @property
    def transform(self) -> str:
        value = self._entry("action_transform")
        return value if value in ("clip", "tanh") else "none"

    def _array_or(self, key: str, default: float, size: int) -> np.ndarray | float:
        try:
            return metadata.number_array(self._entry(key) or "", size)
        except ValueError:
            return default

    def declared_box(self) -> metadata.DeclaredBox | None:
        try:
            return metadata.parse_box(self._entry("action_space") or "", None)
        except ValueError:
            return None

    def declared_observation(self) -> dict | None:
        """The `observation_space` entry, if it is there once and well-formed."""
        values = self.metadata.get(metadata.OBSERVATION_KEY, [])
        try:
            return metadata.parse_observation_space(values[0]) if len(values) == 1 else None
        except ValueError:
            return None

    def adopt_layout(self, loaded) -> None:
        """Check `loaded` against this artifact with the image layout it declares (if any)."""
        declared = self.declared_observation()
        layout = metadata.image_layout(declared) if declared else None
        if layout:
            loaded.image_layout = layout

    @property
    def observation_features(self) -> frozenset[str]:
        """"image" and "dict" as the declared observation space has them (none: a vector)."""
        declared = self.declared_observation()
        if declared is None:
            return frozenset()
        return frozenset({"dict"} if declared["type"] == "Dict" else set()) | frozenset(
            {"image"} if metadata.image_layout(declared) else set())

    def to_final(self, raw: np.ndarray) -> np.ndarray:
        """The final action for raw output rows, after the declared transform."""
        if self.transform == "tanh":
            size = raw.shape[-1]
            return (raw * self._array_or("action_scale", 1.0, size)
                    + self._array_or("action_offset", 0.0, size))
        if self.transform == "clip":
            box = self.declared_box()
            if box is None or box.low.size != raw.shape[-1]:
                return np.clip(raw, -1.0, 1.0)
            return np.clip(raw, box.low, box.high)
        return raw

    def final_action(self, obs: np.ndarray, masks: np.ndarray | None = None,
                     batch_sizes: tuple[int, ...] | None = None) -> np.ndarray:
        """The final action for the rows of `obs`, run as one batch or, with `batch_sizes`, in
        consecutive batches of those sizes (they add up to the number of rows)."""
        if batch_sizes is None or len(batch_sizes) == 1:
            return self.to_final(self.run(obs, masks))
        edges = np.concatenate([[0], np.cumsum(batch_sizes)])
        return np.concatenate([
            self.to_final(self.run(obs[a:b], None if masks is None else masks[a:b]))
            for a, b in zip(edges[:-1], edges[1:])])
