"""The engines an artifact runs in (the PORT clauses).

ONNX Runtime as the other clauses run it (every graph optimization), ONNX Runtime with none, and
the ONNX reference implementation (`onnx.reference`, written from the operator specs), made
strict about what those specs leave to the engine: a float cast (Cast, CastLike) to an integer
type from NaN, an infinity or a value out of the type's range, and a Clip whose min exceeds its
max, end the run (`EngineDependent`); an exact tie at the maximum of an ArgMax (the minimum of
an ArgMin) is noted, and the run can be repeated with such ties broken the other way. And, on
request, the engines people deploy to (RUNTIMES). Each engine is a session with ONNX Runtime's
`run(output_names, feeds)`.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import onnx

ORT = "onnxruntime"
ORT_UNOPTIMIZED = "onnxruntime without graph optimizations"
REFERENCE = "onnx.reference"
REFERENCE_TIES_FLIPPED = "onnx.reference, ArgMax/ArgMin ties broken the other way"
# The engines people deploy to, checked on request (`--runtime`; PORT-04): optional extras,
# `pip install policy-onnx[runtimes]`. The name a user gives, and the module it needs.
TRACT = "tract"
OPENVINO = "openvino"
RUNTIMES = {TRACT: "tract", OPENVINO: "openvino"}
RUNTIMES_HINT = "pip install policy-onnx[runtimes]"
REFERENCES = (REFERENCE, REFERENCE_TIES_FLIPPED)
STANDARD_DOMAINS = ("", "ai.onnx")


class EngineDependent(Exception):
    """The artifact reached an operator case whose result the ONNX spec leaves to the engine."""


class ReferenceLimitation(Exception):
    """onnx.reference cannot load or run a graph of standard operators that ONNX Runtime runs:
    its own limitation (the clause is not checked), not a verdict on the artifact."""


def session(engine: str, path, threads: int):
    """A session of `engine` on the artifact at `path` (onnx.reference reads the file again)."""
    if engine in REFERENCES:
        return StrictReference(onnx.load(str(path)), flip_ties=engine == REFERENCE_TIES_FLIPPED)
    if engine == TRACT:
        return TractSession(path)
    if engine == OPENVINO:
        return OpenVinoSession(path)
    import onnxruntime as ort

    options = ort_options(threads)
    if engine == ORT_UNOPTIMIZED:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_options(threads: int):
    """ONNX Runtime's session options for the suite: quiet, `threads` threads (0: its own
    choice), which do not spin after a run (spinning, they took the core that predict() and the
    searches run on next)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def available(runtime: str) -> bool:
    return importlib.util.find_spec(RUNTIMES[runtime]) is not None


def label(engine: str) -> str:
    """The engine as a verdict names it, with its version."""
    if engine in RUNTIMES:
        from importlib.metadata import version

        settings = " (CPU, f32 precision)" if engine == OPENVINO else ""
        return f"{engine} {version(RUNTIMES[engine])}{settings}"
    if engine in (ORT, ORT_UNOPTIMIZED):
        import onnxruntime

        return f"ONNX Runtime {onnxruntime.__version__}" + engine.removeprefix(ORT)
    return f"onnx.reference (onnx {onnx.__version__})" + engine.removeprefix(REFERENCE)


class TractSession:
    """tract (Sonos's Rust engine, used on embedded boards) on the artifact."""

    def __init__(self, path):
        import tract

        model = tract.onnx().load(str(path)).into_model()
        self.inputs = [model.input_name(i) for i in range(model.input_count())]
        # tract names an output after the node that makes it, in the graph's order
        graph = onnx.load(str(path), load_external_data=False).graph
        self.outputs = [o.name for o in graph.output]
        self.runnable = model.into_runnable()

    def run(self, outputs, feeds: dict) -> list:
        results = self.runnable.run([feeds[name] for name in self.inputs])
        found = dict(zip(self.outputs, (r.to_numpy() for r in results)))
        return [found[name] for name in outputs]


class OpenVinoSession:
    """OpenVINO on the CPU, computing in float32 as the artifact does (its default on CPUs
    with bfloat16 support computes in bfloat16, which no float32 artifact can match within
    the parity tolerance)."""

    def __init__(self, path):
        import openvino

        core = openvino.Core()
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32"})

    def run(self, outputs, feeds: dict) -> list:
        ordered = [feeds[next(n for n in port.get_names() if n in feeds)]
                   for port in self.compiled.inputs]
        results = self.compiled(ordered)
        return [results[self.compiled.output(name)] for name in outputs]


class StrictReference:
    """onnx.reference's evaluator with its Cast, Clip, ArgMax and ArgMin nodes watched (the
    graph's own nodes; nodes inside If or Loop bodies run unwatched)."""

    def __init__(self, proto: onnx.ModelProto, flip_ties: bool = False):
        from onnx.reference import ReferenceEvaluator

        from onnx.inliner import inline_local_functions

        # the model's own functions written out, so that their nodes are watched too
        self.evaluator = ReferenceEvaluator(inline_local_functions(proto) if proto.functions
                                            else proto)
        self.flip_ties = flip_ties
        self.tied: set[str] = set()  # ArgMax/ArgMin nodes that met an exact tie
        for node in self.evaluator.rt_nodes_:
            watch = {"Cast": _watched_cast, "CastLike": _watched_cast, "Clip": _watched_clip,
                     "ArgMax": self._watched_arg,
                     "ArgMin": self._watched_arg}.get(node.onnx_node.op_type)
            if watch is not None and node.onnx_node.domain in STANDARD_DOMAINS:
                node._run = watch(node, node._run)

    def run(self, outputs, feeds: dict) -> list:
        return self.evaluator.run(outputs, feeds)

    def _watched_arg(self, node, run):
        proto, is_max = node.onnx_node, node.onnx_node.op_type == "ArgMax"

        def watched(data, *args, **kwargs):
            chosen = run(data, *args, **kwargs)[0]
            axis = kwargs.get("axis")
            axis = _attribute(proto, "axis", 0) if axis is None else axis
            pick = np.argmax if is_max else np.argmin
            first = pick(data, axis=axis)
            last = data.shape[axis] - 1 - pick(np.flip(data, axis=axis), axis=axis)
            if data.size and (first != last).any():
                self.tied.add(proto.name or proto.output[0])
                if self.flip_ties:  # the index the graph did not ask for
                    other = first if _attribute(proto, "select_last_index", 0) else last
                    chosen = other.astype(np.int64).reshape(chosen.shape)
            return (chosen,)
        return watched


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _watched_cast(node, run):
    """A Cast (its `to`) or CastLike (the type of its second input) of a float to an integer
    type, watched for values out of that type's range."""
    proto = node.onnx_node

    def watched(data, *args, **kwargs):
        target = np.asarray(args[0]).dtype if proto.op_type == "CastLike" else \
            onnx.helper.tensor_dtype_to_np_dtype(_attribute(proto, "to", 0))
        if np.issubdtype(data.dtype, np.floating) and np.issubdtype(target, np.integer):
            info = np.iinfo(target)
            wide = np.trunc(np.asarray(data, np.float64))
            # the range's ends as float64: the minimum exactly, the maximum plus 1 (2^bits)
            bad = ~np.isfinite(wide) | (wide < float(info.min)) | (wide >= float(info.max) + 1)
            if bad.any():
                value = wide[bad].flat[0]
                raise EngineDependent(
                    f"Cast node {proto.name or proto.output[0]!r} converts {value!r} to "
                    f"{np.dtype(target).name}: the ONNX spec leaves the result of casting NaN, "
                    "an infinity or a value out of the integer type's range to the engine "
                    "(x86 engines give the type's minimum, others saturate or wrap)")
        return run(data, *args, **kwargs)
    return watched


def _watched_clip(node, run):
    proto = node.onnx_node

    def watched(data, *args, **kwargs):
        low, high = (args + (None, None))[:2]
        low = kwargs.get("min", low) if low is None else low
        high = kwargs.get("max", high) if high is None else high
        if low is not None and high is not None and np.any(np.asarray(low) > np.asarray(high)):
            raise EngineDependent(
                f"Clip node {proto.name or proto.output[0]!r} has min {np.asarray(low)!r} above "
                f"max {np.asarray(high)!r}: engines differ there (ONNX says every value becomes "
                "max; an engine clipping to max first, then to min, gives min)")
        return run(data, *args, **kwargs)
    return watched


def operator_problems(proto: onnx.ModelProto) -> list[str]:
    """Why the graph is not made of default-domain ONNX operators that exist at the opset it
    declares (a call of a function the model defines is judged by that function's body)."""
    opset = {o.domain: o.version for o in proto.opset_import}
    declared = opset.get("", opset.get("ai.onnx"))
    functions = {(f.domain, f.name): f for f in proto.functions}
    problems: list[str] = []
    if declared is None:
        return ["the model imports no opset of the default ONNX domain"]

    def judge(nodes, seen: frozenset) -> None:
        for node in nodes:
            key = (node.domain, node.op_type)
            if key in functions:
                if key not in seen:
                    judge(functions[key].node, seen | {key})
            elif node.domain not in STANDARD_DOMAINS:
                problems.append(f"{node.op_type} of domain {node.domain!r} (node "
                                f"{node.name or node.output[0]!r})")
            else:
                try:
                    onnx.defs.get_schema(node.op_type, declared, "")
                except onnx.defs.SchemaError:
                    problems.append(f"{node.op_type} does not exist at the declared opset "
                                    f"{declared} (node {node.name or node.output[0]!r})")
            for attribute in node.attribute:
                for body in ([attribute.g] if attribute.HasField("g") else list(attribute.graphs)):
                    judge(body.node, seen)

    judge(proto.graph.node, frozenset())
    return sorted(set(problems))
