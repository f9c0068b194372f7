"""Decision coverage of an artifact's own graph (spec section 5, "Decisions in the graph").

A fault that random draws never reach lives behind a data-dependent decision inside the graph:
a comparison, a Where, a rounding, an argmax, a unit of a piecewise-linear function, or
anything that reads the batch size. The suite reads the graph and finds every such place; it
runs a copy of the graph with the values that decide each one exposed as extra outputs, and
records which ways each decision went over the observations it draws. For every way not seen,
it searches, guided by the decision's own margin (how far those values are from deciding the
other way): it scans each observation element across its magnitudes, zooms in where the
margin moves toward the other way, and bisects between observations on either side of a
boundary. Decisions that read only the batch size are searched over batch sizes. The rows
found (both sides of each boundary) are checked by the parity and behaviour clauses like any
other draw, and the batch sizes found by BEH-01/02.

Nothing here needs the model: only the artifact and the observations a runtime may feed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .inlining import constant_values, control_flow_inlined, outer_names, scalar_value

COMPARISONS = {"Greater": "Greater", "Less": "Less", "GreaterOrEqual": "GreaterOrEqual",
               "LessOrEqual": "LessOrEqual", "Equal": "Equal"}
# Their outputs are rounded or truncated to integers: each value is a way the node went.
STEPS = ("Round", "Floor", "Ceil", "Mod")
SELECTIONS = ("ArgMax", "ArgMin", "TopK")
# Decide only on NaN or inf: no observation is, but a value computed from one can overflow
# (past 2^128, float32's largest power) to inf, and make NaN from inf - inf or 0 * inf.
GUARDS = ("IsNaN", "IsInf")
FLOAT32_LOG2_MAX = 128.0
# Piecewise-linear units: a trigger can hide behind one without any comparison.
UNITS = ("Relu", "LeakyRelu", "PRelu", "ThresholdedRelu", "Elu", "Selu", "Celu", "Abs",
         "ReduceL1", "Max", "Min", "Clip", "HardSigmoid", "HardSwish", "Shrink")
# Units too: which element of the reduced axes wins (a Max over many inputs at once); a
# GlobalMaxPool reduces every axis after the batch and the channels.
REDUCTIONS = ("ReduceMax", "ReduceMin", "GlobalMaxPool")
# Operations that decide nothing on the values they are fed: linear or smooth maths, and data
# moved by constant or integer indices (an integer made from values is a decision before them).
# Any other operation on observation values that is not a decision, a unit or a guard (a
# lookup such as GridSample, a windowed MaxPool, another domain's operator) is named in the
# report as not modelled: a decision inside it would go unseen.
NO_DECISION = frozenset({
    "Add", "Sub", "Mul", "Div", "Neg", "Reciprocal", "Pow", "Sqrt", "Exp", "Log", "Tanh",
    "Sigmoid", "Softmax", "LogSoftmax", "Softplus", "Softsign", "Erf", "Gelu", "Mish", "Sin",
    "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "MatMul",
    "Gemm", "Conv", "ConvTranspose", "BatchNormalization", "LayerNormalization",
    "InstanceNormalization", "GroupNormalization", "LpNormalization", "AveragePool",
    "GlobalAveragePool", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL2", "ReduceSumSquare",
    "ReduceLogSum", "ReduceLogSumExp", "Einsum", "CumSum", "Sum", "Mean", "DequantizeLinear",
    "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split",
    "Slice", "Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Expand",
    "Tile", "Pad", "Resize", "DepthToSpace", "SpaceToDepth", "Trilu", "Dropout",
    "Cast", "Constant", "ConstantOfShape", "Shape", "Size", "Range", "EyeLike",
    "LSTM", "GRU", "RNN", "And", "Or", "Not", "Xor", "If", "Loop", "Scan"})
# Sums over axes: over the batch axis (or every axis) they mix the rows, which makes what they
# compute a matter of the batch (searched over batch sizes, like the batch size itself).
SUMS = ("ReduceSum", "ReduceMean", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceSumSquare",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMin")
# Of the operations that decide nothing, the inputs that carry data (the others: shapes,
# indices, sizes, axes). One of those others computed from observation values is a lookup the
# search cannot read: named as not modelled.
DATA_INPUTS = {"Reshape": (0,), "Expand": (0,), "Tile": (0,), "Slice": (0,), "Pad": (0, 2),
               "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "ScatterND": (0, 2),
               "ScatterElements": (0, 2), "Resize": (0,), "Split": (0,), "Squeeze": (0,),
               "Unsqueeze": (0,), "CumSum": (0,), "Trilu": (0,), "Range": (),
               "ConstantOfShape": (), "EyeLike": (), **{op: (0,) for op in SUMS}}
# A recurrent operator is smooth with these activations only (and no `clip`).
SMOOTH_ACTIVATIONS = {"Sigmoid", "Tanh", "Softsign", "Softplus", "Affine", "ScaledTanh"}
# Where a value leaves the domain of these, they make NaN (or inf): Sqrt, Log and Acosh below
# their lower edge, Asin, Acos and Atanh past +-1. On observation values they are decisions:
# inside the domain or not.
LOWER_EDGES = {"Sqrt": 0.0, "Log": 0.0, "Acosh": 1.0}
UNIT_RANGE = ("Asin", "Acos", "Atanh")
# Units that are zero below their kink: a product of two or more of them is non-zero only
# where all are active, a conjunction no single unit marks.
GATES = ("Relu", "ThresholdedRelu")
# Operations that move values without changing them: a product, a condition or a gate is read
# through them.
DATA_MOVES = ("Identity", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Flatten", "Expand")
# A constant table read at an index computed from the batch size alone is a decision on the size
# too, with no comparison: its ways are the table's most common entry and any other. The batch
# size search tries the sizes whose index meets each of the others (the first MAX_RARE_ENTRIES;
# the index taken as an affine function of the size, from two sizes tried), and the positions
# of the first MAX_RARE_CONSTANTS as constants on the decision's way.
MAX_RARE_ENTRIES = 64
MAX_RARE_CONSTANTS = 8
INTEGER_TYPES = {TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
                 TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
                 TensorProto.BOOL}
BATCH_READERS = ("Shape", "Size")
# Nodes that consume a bool: made of comparisons (And, Or, Not), it is one decision there.
CONSUMERS = ("Where", "If", "Cast")


@dataclass(frozen=True)
class Place:
    """One place where the graph decides: a node, what kind of decision, the tensors whose
    values decide it (exposed as outputs), and what it reads (observation values, the batch
    size, a mask input)."""
    node: str
    op: str
    # "decision", "unit" (piecewise-linear), "guard" (NaN/inf of an input only) or "unmodelled"
    # (an operation on values that may decide, which the search cannot read: only named)
    kind: str
    tensors: tuple[str, ...]
    # "values", "batch", "values+batch" (a sum over the rows) or "input" (a graph input other
    # than obs, e.g. masks)
    reads: str
    attributes: tuple = ()
    # A Where's or If's condition made of comparisons (And, Or, Not): the tree its margin is
    # computed from, e.g. ("And", ("Greater", a, b), ("Less", c, d)); None otherwise.
    condition: tuple | None = None
    # For a decision on the batch size: the scalar constants on its way from Shape or Size
    # (a Mod's divisor, a compared size), the sizes it most likely singles out.
    batch_constants: tuple[float, ...] = ()
    # Its position among the graph's places (find_places), which tells places apart: `node`,
    # a node's name or else its first output's, can be another node's name too.
    index: int = -1

    @property
    def label(self) -> str:
        return f"{self.op} '{self.node}'"

    @property
    def lookup(self) -> bool:
        """A constant table read at the batch size (`_batch_lookup`)."""
        return dict(self.attributes).get("common") is not None

    @property
    def on_values(self) -> bool:
        return "values" in self.reads.split("+")

    @property
    def on_batch(self) -> bool:
        return "batch" in self.reads.split("+")


def _attribute(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def find_places(proto: onnx.ModelProto, obs_name: str = "obs") -> list[Place]:
    """Every place the graph decides on data it is fed (a decision on constants is none; a
    Where, If or Cast on a comparison's or a guard's output is that comparison or guard)."""
    graph = proto.graph
    constants = constant_values(graph)
    inputs = {i.name for i in graph.input if i.name not in constants}
    reads: dict[str, set[str]] = {name: ({"values"} if name == obs_name else {"input"})
                                  for name in inputs}
    batch_constants: dict[str, frozenset] = {}  # per tensor computed from the batch size
    compared = set()  # outputs of comparisons and guards, and casts of them
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    places = []
    for node in graph.node:
        sources = set().union(*(reads.get(i, set()) for i in (*node.input, *outer_names(node))
                                if i))
        if node.op_type in BATCH_READERS:
            sources = {"batch"} if sources else set()
        elif node.op_type in SUMS and sources and _across_rows(node, constants):
            sources = sources | {"batch"}  # its values depend on every row, and on how many
        elif node.op_type == "ConstantOfShape":
            sources &= {"batch"}
        for out in node.output:
            reads[out] = sources
            if "batch" in sources:
                batch_constants[out] = frozenset().union(
                    *(batch_constants.get(i, ()) for i in node.input),
                    _scalars(node.input, constants))
        lookup = _batch_lookup(node, sources, constants)
        if lookup is not None:
            common, rare = lookup
            places.append(Place(node.name or node.output[0], node.op_type, "decision",
                                (node.output[0], node.input[1]), "batch",
                                (("common", common), ("rare", tuple(rare))),
                                batch_constants=tuple(sorted(
                                    {*batch_constants.get(node.input[1], ()),
                                     *rare[:MAX_RARE_CONSTANTS]}))))
            continue
        condition = (_condition(node.input[0], producers, constants)
                     if node.op_type in CONSUMERS else None)
        if node.op_type == "Mul" and not any(c.op_type == "Mul" for c in consumers.get(
                node.output[0], ())):  # the last of a product
            gates = _gates(node.output[0], producers, constants)
            condition = _all(gates) if len(gates) > 1 else None
        if node.op_type == "Where" and condition is not None:
            leaves_read = set().union(*(reads.get(t, set()) for t in _leaves(condition)))
            what = _what_decides(leaves_read)
            if what:
                places += _within_branches(node, condition, what, producers, consumers,
                                           constants)
        kind = "decision" if condition is not None else _kind(node)
        if kind == "guard" and node.input[0] not in inputs:
            kind = "decision"  # a value computed from a finite observation can overflow
        axes = _reduced_axes(node, constants) if node.op_type in REDUCTIONS else None
        if node.op_type in REDUCTIONS and node.input[0] in compared:
            continue  # an All/Any of a condition: decided where it is cast
        if "values" in sources and (kind is None and not _decides_nothing(node, reads)
                                    or node.op_type in REDUCTIONS and axes is None):
            places.append(Place(node.name or node.output[0], node.op_type, "unmodelled", (),
                                "values"))
            continue
        if kind is None or node.op_type in REDUCTIONS and axes is None:
            continue
        if node.op_type in COMPARISONS or node.op_type in GUARDS or \
                (node.op_type == "Cast" and condition is not None):
            compared.update(node.output)  # a consumer of these is decided there
        tensors = _deciding_tensors(node)
        deciding = set().union(*(reads.get(t, set()) for t in tensors))
        if not deciding or (node.op_type in CONSUMERS and tensors[0] in compared):
            continue
        what = _what_decides(deciding)
        attributes = tuple((a.name, onnx.helper.get_attribute_value(a)) for a in node.attribute
                           if a.name in ("axis", "to", "min", "max", "alpha"))
        if axes is not None:
            attributes += (("axes", axes),)
        if node.op_type == "Clip":  # which of min and max are given (either may be omitted)
            attributes += (("clip_inputs", tuple(bool(i) for i in node.input)),)
        if condition is not None:
            decided = node.output[0] if node.op_type == "Mul" else tensors[0]
            tensors = (decided, *_leaves(condition))
        on_the_way = sorted(frozenset().union(*(batch_constants.get(t, ()) for t in node.input),
                                              _scalars(node.input, constants))) \
            if "batch" in what else ()
        places.append(Place(node.name or node.output[0], node.op_type, kind, tensors, what,
                            attributes, condition, tuple(on_the_way)))
    return [replace(place, index=i)
            for i, place in enumerate(places + _domain_edges(graph.node, reads))]


def _batch_lookup(node: onnx.NodeProto, sources: set[str], constants: dict
                  ) -> tuple[tuple[float, ...], list[int]] | None:
    """For a Gather of a constant table at indices computed from the batch size alone: the
    table's most common entry (flattened) and the positions of the others (at most
    MAX_RARE_ENTRIES); None for any other node, or a table of one entry throughout, or not of
    numbers."""
    if node.op_type != "Gather" or sources != {"batch"} or node.input[0] not in constants:
        return None
    try:
        table = numpy_helper.to_array(constants[node.input[0]])
    except Exception:  # weights outside the file: the graph's loading is GRAPH-02's concern
        return None
    if table.ndim == 0 or not table.size or not (np.issubdtype(table.dtype, np.number)
                                                  or table.dtype == np.bool_):
        return None
    entries = np.moveaxis(table, int(_attribute(node, "axis", 0)), 0)
    entries = entries.reshape(len(entries), -1).astype(np.float64)
    kinds, which, counts = np.unique(entries, axis=0, return_inverse=True, return_counts=True)
    if len(kinds) < 2:
        return None
    common = int(np.argmax(counts))
    rare = np.flatnonzero(np.ravel(which) != common)[:MAX_RARE_ENTRIES]
    return tuple(float(v) for v in kinds[common]), [int(i) for i in rare]


def _what_decides(sources: set[str]) -> str | None:
    """A place's `reads`: observation values, and the batch size when a sum over the rows
    mixes it in; or the batch size alone; or another input."""
    if "values" in sources:
        return "values+batch" if "batch" in sources else "values"
    return next((w for w in ("input", "batch") if w in sources), None)


def _within_branches(node: onnx.NodeProto, condition: tuple, what: str, producers: dict,
                     consumers: dict, constants: dict) -> list[Place]:
    """A Where inside a branch of other Wheres decides only where their conditions lead to
    it: each way of it there is a decision of its own (its condition and theirs)."""
    path = _branch_path(node.output[0], producers, consumers, constants)
    if path is None:
        return []
    name = node.name or node.output[0]
    found = []
    for way, inner in (("true", condition), ("false", ("Not", condition))):
        tree = ("And", path, inner)
        found.append(Place(f"{name} ({way} within its outer Where)", "Where", "decision",
                           _leaves(tree), what, (("derived", True),), tree))
    return found


def _branch_path(tensor: str, producers: dict, consumers: dict, constants: dict,
                 depth: int = 0) -> tuple | None:
    """The condition under which `tensor` is what a Where it feeds (through DATA_MOVES)
    passes on, and the Wheres that one feeds (their conditions, or their negations for the
    second branch), as a tree; None where it feeds no Where's branch on comparisons."""
    if depth > 16:
        return None
    paths = []
    for consumer in consumers.get(tensor, ()):
        if consumer.op_type in DATA_MOVES:
            further = _branch_path(consumer.output[0], producers, consumers, constants,
                                   depth + 1)
            if further is not None:
                paths.append(further)
            continue
        if consumer.op_type != "Where" or tensor not in consumer.input[1:]:
            continue
        outer = _condition(consumer.input[0], producers, constants)
        if outer is None:
            continue
        here = outer if consumer.input[1] == tensor else ("Not", outer)
        further = _branch_path(consumer.output[0], producers, consumers, constants, depth + 1)
        paths.append(here if further is None else ("And", here, further))
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else ("Or", paths[0], _any_of(paths[1:]))


def _any_of(parts: list[tuple]) -> tuple:
    return parts[0] if len(parts) == 1 else ("Or", parts[0], _any_of(parts[1:]))


def _domain_edges(nodes, reads: dict) -> list[Place]:
    """The operations on observation values that make NaN or inf outside their domain
    (LOWER_EDGES, UNIT_RANGE): decisions, inside the domain or not."""
    return [Place(node.name or node.output[0], node.op_type, "decision", (node.input[0],),
                  "values")
            for node in nodes if (node.op_type in LOWER_EDGES or node.op_type in UNIT_RANGE)
            and node.domain in ("", "ai.onnx") and "values" in reads.get(node.input[0], ())]


def _decides_nothing(node: onnx.NodeProto, reads: dict) -> bool:
    """Whether an operation of NO_DECISION decides nothing as it is used: a recurrent operator
    with smooth activations and no clip; the others with no shape, index or size computed from
    observation values."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in NO_DECISION:
        return False
    if node.op_type in ("LSTM", "GRU", "RNN"):
        activations = [a.decode() if isinstance(a, bytes) else a
                       for a in _attribute(node, "activations", [])]
        return _attribute(node, "clip", None) is None and \
            all(a in SMOOTH_ACTIVATIONS for a in activations)
    data = DATA_INPUTS.get(node.op_type)
    return data is None or not any("values" in reads.get(name, ())
                                   for i, name in enumerate(node.input)
                                   if name and i not in data)


def _across_rows(node: onnx.NodeProto, constants: dict) -> bool:
    """Whether a reduction mixes the rows: it reduces the batch axis, every axis, or axes that
    are not constants."""
    axes = _axes(node, constants)
    if axes is None:
        return True
    if not axes:
        return not _attribute(node, "noop_with_empty_axes", 0)
    return 0 in axes


def _axes(node: onnx.NodeProto, constants: dict) -> tuple[int, ...] | None:
    """The axes a reduction names (its second input, or its `axes` attribute before opsets
    that made it an input; () when it names none); None when they are not a readable
    constant."""
    if len(node.input) > 1 and node.input[1]:
        try:
            return tuple(int(a) for a in
                         np.ravel(numpy_helper.to_array(constants[node.input[1]])))
        except Exception:  # not a constant, or one that cannot be read
            return None
    return tuple(_attribute(node, "axes", ()))


def _gates(tensor: str, producers: dict, constants: dict, depth: int = 0) -> list[tuple]:
    """The factors of a product (through Mul nodes and DATA_MOVES) that are zero unless a
    condition holds: units zero below their kink (GATES), each as ("Active", its input, its
    kink), and conditions cast to numbers, each as its condition tree."""
    node = producers.get(tensor)
    if node is None or depth > 16:
        return []
    if node.op_type == "Mul":
        return [g for i in node.input for g in _gates(i, producers, constants, depth + 1)]
    if node.op_type in DATA_MOVES:
        return _gates(node.input[0], producers, constants, depth + 1)
    if node.op_type in GATES:
        kink = _attribute(node, "alpha", 1.0) if node.op_type == "ThresholdedRelu" else 0.0
        return [("Active", node.input[0], kink)]
    if node.op_type == "Cast":
        condition = _condition(node.input[0], producers, constants, depth + 1)
        return [condition] if condition is not None else []
    return []


def _all(parts: list[tuple]) -> tuple:
    """The conjunction of condition trees, as nested Ands."""
    return parts[0] if len(parts) == 1 else ("And", parts[0], _all(parts[1:]))


def _scalars(names, constants: dict) -> set[float]:
    """The values of the one-element constants among `names` (readable ones)."""
    values = (scalar_value(constants, name) for name in names)
    return {float(v) for v in values if v is not None}


def _reduced_axes(node: onnx.NodeProto, constants: dict) -> tuple[int, ...] | None:
    """The axes a ReduceMax/ReduceMin reduces, when they are constants and leave the batch
    axis alone (a reduction across rows is no per-row decision); None otherwise. A
    GlobalMaxPool's are every axis after the channels (of a tensor of rank up to 8)."""
    if node.op_type == "GlobalMaxPool":
        return tuple(range(2, 8))
    axes = _axes(node, constants)
    return axes if axes and 0 not in axes else None


def _condition(tensor: str, producers: dict, constants: dict, depth: int = 0) -> tuple | None:
    """The comparisons a bool tensor is made of, as a tree: ("Greater", a, b), ("And", t, u),
    ("Or", t, u), ("Not", t), and ("All", axes, keepdims, t) / ("Any", ...) for a ReduceMin /
    ReduceMax over a condition cast to numbers (casts of a condition are that condition);
    None when it is made otherwise (an input, NaN tests, a sum)."""
    node = producers.get(tensor)
    if node is None or depth > 16:
        return None
    below = depth + 1
    if node.op_type in COMPARISONS:
        return (node.op_type, node.input[0], node.input[1])
    if node.op_type in ("And", "Or", "Not"):
        parts = [_condition(i, producers, constants, below) for i in node.input]
        return None if None in parts else (node.op_type, *parts)
    if node.op_type == "Cast" or node.op_type in DATA_MOVES:
        return _condition(node.input[0], producers, constants, below)
    if node.op_type in REDUCTIONS:
        axes = _reduced_axes(node, constants)
        part = _condition(node.input[0], producers, constants, below)
        if axes is None or part is None:
            return None
        which = "All" if node.op_type == "ReduceMin" else "Any"
        return (which, axes, int(_attribute(node, "keepdims", 1)), part)
    return None


def _leaves(tree: tuple) -> tuple[str, ...]:
    """The tensors a condition tree compares."""
    if tree[0] in COMPARISONS:
        return tree[1:]
    if tree[0] == "Active":
        return (tree[1],)
    if tree[0] in ("All", "Any"):
        return _leaves(tree[3])
    return tuple(t for part in tree[1:] for t in _leaves(part))


def _condition_margin(tree: tuple, values: dict) -> np.ndarray:
    """How far a condition is from true (> 0 where true): a comparison's signed difference
    (the distance to equality, negated, for Equal), the smallest of an And's, the largest of
    an Or's, a Not's negated; over the elements an All or Any reduces, likewise). A conjunction
    adds a small share of what each of its parts lacks, so that a search gains from bringing
    any part closer, not only the furthest."""
    op = tree[0]
    if op in COMPARISONS:
        a, b = _broadcast(values[tree[1]], values[tree[2]])
        if op == "Equal":
            return -np.abs(a - b)
        return (a - b) if op in ("Greater", "GreaterOrEqual") else (b - a)
    if op == "Active":  # a gate's input past its kink
        return np.asarray(values[tree[1]], np.float64) - tree[2]
    if op in ("All", "Any"):
        _, axes, keepdims, part = tree
        m = _condition_margin(part, values)
        axes = tuple(a % m.ndim for a in axes) if m.ndim else None
        if op == "Any":
            return np.max(m, axis=axes, keepdims=bool(keepdims))
        lacking = np.sum(np.minimum(m, 0.0), axis=axes, keepdims=bool(keepdims))
        return np.min(m, axis=axes, keepdims=bool(keepdims)) + LACKING_SHARE * lacking
    parts = [_condition_margin(part, values) for part in tree[1:]]
    if op == "Not":
        return -parts[0]
    try:
        parts = _broadcast(*parts)
    except ValueError:  # parts of other shapes (through a Reshape): each row's closest or
        pick = np.max if op == "Or" else np.min  # furthest element
        parts = _broadcast(*(pick(p.reshape(len(p), -1), axis=1, keepdims=True) if p.ndim
                             else p for p in parts))
    if op == "Or":
        return np.maximum(*parts)
    return np.minimum(*parts) + LACKING_SHARE * (np.minimum(parts[0], 0.0)
                                                 + np.minimum(parts[1], 0.0))


def _holds(tree: tuple, values: dict) -> np.ndarray:
    """Where a condition tree is true."""
    op = tree[0]
    if op in COMPARISONS:
        a, b = _broadcast(values[tree[1]], values[tree[2]])
        return {"Greater": a > b, "Less": a < b, "GreaterOrEqual": a >= b, "LessOrEqual": a <= b,
                "Equal": a == b}[op]
    if op == "Active":
        return np.asarray(values[tree[1]], np.float64) > tree[2]
    if op in ("All", "Any"):
        _, axes, keepdims, part = tree
        h = _holds(part, values)
        axes = tuple(a % h.ndim for a in axes) if h.ndim else None
        return (np.all if op == "All" else np.any)(h, axis=axes, keepdims=bool(keepdims))
    parts = [_holds(part, values) for part in tree[1:]]
    if op == "Not":
        return ~parts[0]
    pick = np.any if op == "Or" else np.all
    try:
        parts = np.broadcast_arrays(*parts)
    except ValueError:  # parts of other shapes: per row
        parts = np.broadcast_arrays(*(pick(p.reshape(len(p), -1), axis=1, keepdims=True)
                                      if p.ndim else p for p in parts))
    return np.logical_or(*parts) if op == "Or" else np.logical_and(*parts)


def _kind(node: onnx.NodeProto) -> str | None:
    op = node.op_type
    if op in GUARDS:
        return "guard"
    if op in COMPARISONS or op in STEPS or op in SELECTIONS or \
            op in ("Sign", "If", "Where", "OneHot"):
        return "decision"
    if op == "Cast":
        return "decision" if _attribute(node, "to", 0) in INTEGER_TYPES else None
    if op in UNITS or op in REDUCTIONS:
        return "unit"
    return None


def _deciding_tensors(node: onnx.NodeProto) -> tuple[str, ...]:
    """The tensors to expose: the inputs that decide (outputs for a Where's condition only)."""
    op = node.op_type
    if op == "Where":
        return (node.input[0],)
    if op == "If":
        return (node.input[0],)
    if op in ("Max", "Min", "Clip") or op in COMPARISONS or op == "Mod":
        return tuple(i for i in node.input if i)
    if op == "OneHot":  # the indices, and the depth they must lie within
        return (node.input[0], node.input[1])
    return (node.input[0],)


# --- outcomes and margins --------------------------------------------------------------------
def _broadcast(*arrays):
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    return np.broadcast_arrays(*arrays)


def ways(place: Place, values: list[np.ndarray], rows: int) -> tuple[np.ndarray, int]:
    """Which way the place went for each row and element: (codes [rows, elements], how many
    ways there are; 0 for steps, whose ways are the integers they make)."""
    op, get = place.op, dict(place.attributes).get
    if op in COMPARISONS:
        a, b = _broadcast(*values[:2])
        outcome = {"Greater": a > b, "Less": a < b, "GreaterOrEqual": a >= b,
                   "LessOrEqual": a <= b, "Equal": a == b}[op]
        return _per_row(outcome.astype(np.int64), rows), 2
    if get("derived"):  # a condition no tensor of the graph holds
        holds = _holds(place.condition, dict(zip(place.tensors, values)))
        return _per_row(holds.astype(np.int64), rows), 2
    if op in ("Where", "If") or place.condition is not None:
        return _per_row(np.asarray(values[0]).astype(bool).astype(np.int64), rows), 2
    if place.lookup:  # a constant table's entry: its most common one, or another
        common = np.asarray(get("common"))
        x = np.asarray(values[0], np.float64).reshape(-1, common.size)
        return _per_row((x != common).any(axis=1).astype(np.int64), rows), 2
    if op in GUARDS:
        x = np.asarray(values[0], np.float64)
        return _per_row((np.isnan(x) if op == "IsNaN" else np.isinf(x)).astype(np.int64),
                        rows), 2
    if op == "Sign":
        x = np.asarray(values[0], np.float64)
        return _per_row(np.sign(x).astype(np.int64) + 1, rows), 3
    if op == "OneHot" or op in LOWER_EDGES or op in UNIT_RANGE:  # within the range, or not
        return _per_row((_within(place, values) > 0).astype(np.int64), rows), 2
    if op == "Cast" and get("to") == TensorProto.BOOL:
        return _per_row((np.asarray(values[0], np.float64) != 0).astype(np.int64), rows), 2
    if op in STEPS or op == "Cast":
        x = np.nan_to_num(np.asarray(values[0], np.float64))
        step = {"Round": np.round, "Floor": np.floor, "Ceil": np.ceil, "Cast": np.trunc}
        x = np.floor(x / np.asarray(values[1], np.float64)) if op == "Mod" else step[op](x)
        return _per_row(x, rows), 0
    if op in SELECTIONS:
        x = np.moveaxis(np.asarray(values[0], np.float64),
                        get("axis", -1 if op == "TopK" else 0), -1)
        return _per_row(np.argmax(-x if op == "ArgMin" else x, axis=-1), rows), x.shape[-1]
    if op in ("Max", "Min"):
        stacked = np.stack(_broadcast(*values), axis=-1)
        choice = np.argmax(stacked if op == "Max" else -stacked, axis=-1)
        return _per_row(choice, rows), len(values)
    if op in REDUCTIONS:
        x = _competing(values[0], get("axes"))
        return _per_row(np.argmax(-x if op == "ReduceMin" else x, axis=-1), rows), x.shape[-1]
    if op == "Clip":
        x, low, high = _clip_terms(values, get)
        return _per_row(np.where(x < low, 0, np.where(x > high, 2, 1)), rows), 3
    x = np.asarray(values[0], np.float64)  # Relu and friends, Abs: which side of their kink
    return _per_row((x > _kink(place)).astype(np.int64), rows), 2


def _within(place: Place, values: list[np.ndarray]) -> np.ndarray:
    """How far a value lies within its range (> 0 inside): a OneHot's indices within
    [-depth, depth) (a float index is truncated), an operation's input within its domain."""
    x = np.asarray(values[0], np.float64)
    if place.op == "OneHot":
        depth = float(np.ravel(values[1])[0])
        return np.minimum(x + depth + 1.0, depth - x)
    if place.op in LOWER_EDGES:
        return x - LOWER_EDGES[place.op]
    return 1.0 - np.abs(x)


def _competing(x, axes) -> np.ndarray:
    """x with the axes a reduction reduces moved to the end and flattened into one: the
    elements that compete for each output element."""
    x = np.asarray(x, np.float64)
    axes = sorted({a % x.ndim for a in axes if -x.ndim <= a < x.ndim})
    kept = [a for a in range(x.ndim) if a not in axes]
    x = np.transpose(x, kept + axes)
    return x.reshape(*x.shape[:len(kept)], -1)


def _kink(place: Place) -> float:
    return dict(place.attributes).get("alpha", 1.0) if place.op == "ThresholdedRelu" else 0.0


def _clip_terms(values, get):
    """x, low, high of a Clip, broadcast (bounds from inputs, or attributes before opset 11)."""
    present = get("clip_inputs") or (True,) * len(values)
    given = dict(zip([i for i, there in enumerate(present) if there], values))
    low = given.get(1, get("min", -np.inf))
    high = given.get(2, get("max", np.inf))
    return _broadcast(values[0], low, high)


def needed_ways(place: Place, count: int) -> set[int]:
    """The ways a place must be seen to go: both sides of a comparison or a kink, every input
    of a Max/Min, every index of an argmax, every sign (zero too: 1 - Sign(x)^2 tests x == 0),
    below, inside and above a Clip."""
    return set(range(count))


def margins(place: Place, values: list[np.ndarray], rows: int, way: int) -> np.ndarray | None:
    """[rows, elements]: how far each element is from going `way` (> 0 where it goes that
    way), for the places a search can steer; None where it cannot (a Where on a bool input)."""
    op, get = place.op, dict(place.attributes).get
    if place.condition is not None:
        m = _condition_margin(place.condition, dict(zip(place.tensors, values)))
        return _per_row(m if way == 1 else -m, rows)
    if op in COMPARISONS:
        a, b = _broadcast(*values[:2])
        d = a - b
        if op == "Equal":
            return _per_row(-np.abs(d) if way == 1 else np.abs(d), rows)
        sign = 1.0 if op in ("Greater", "GreaterOrEqual") else -1.0
        return _per_row(sign * d if way == 1 else -sign * d, rows)
    if op == "Sign":
        x = np.asarray(values[0], np.float64)
        return _per_row({0: -x, 1: -np.abs(x), 2: x}[way], rows)
    if op == "OneHot" or op in LOWER_EDGES or op in UNIT_RANGE:
        m = _within(place, values)
        return _per_row(m if way == 1 else -m, rows)
    if op in GUARDS:  # toward float32's overflow, where inf (and NaN, from inf - inf) is made
        x = np.abs(np.asarray(values[0], np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            toward = np.where(np.isnan(x), np.inf if op == "IsNaN" else -np.inf,
                              np.log2(x) - FLOAT32_LOG2_MAX)
        return _per_row(toward if way == 1 else -toward, rows)
    if op == "Cast" and get("to") == TensorProto.BOOL:  # x != 0
        x = np.abs(np.asarray(values[0], np.float64))
        return _per_row(x if way == 1 else -x, rows)
    if op in SELECTIONS or op in ("Max", "Min") or op in REDUCTIONS:
        if op in SELECTIONS:
            x = np.moveaxis(np.asarray(values[0], np.float64),
                            get("axis", -1 if op == "TopK" else 0), -1)
        elif op in REDUCTIONS:
            x = _competing(values[0], get("axes"))
        else:
            x = np.stack(_broadcast(*values), axis=-1)
        x = -x if op in ("ArgMin", "Min", "ReduceMin") else x
        others = np.delete(x, way, axis=-1)
        return _per_row(x[..., way] - others.max(axis=-1, initial=-np.inf), rows)
    if op == "Clip":
        x, low, high = _clip_terms(values, get)
        return _per_row({0: low - x, 2: x - high, 1: np.minimum(x - low, high - x)}[way], rows)
    if op in UNITS:
        x = np.asarray(values[0], np.float64) - _kink(place)
        return _per_row(x if way == 1 else -x, rows)
    return None


def _per_row(values: np.ndarray, rows: int) -> np.ndarray:
    """[rows, elements]: a tensor with the batch first, or on another axis (a Loop's scan
    output), or flattened into its elements (row after row); else a value shared by every
    row."""
    values = np.asarray(values)
    if values.ndim and values.shape[0] == rows:
        return values.reshape(rows, -1)
    if rows > 1 and rows in values.shape:
        return np.moveaxis(values, values.shape.index(rows), 0).reshape(rows, -1)
    if rows > 1 and values.ndim and values.size % rows == 0:
        return values.reshape(rows, -1)
    return np.broadcast_to(values.reshape(1, -1), (rows, values.size))


# --- the instrumented copy of the graph ------------------------------------------------------
class Instrumented:
    """The artifact's graph with every deciding tensor exposed as an output, run by ONNX
    Runtime (constants are read from the file)."""

    def __init__(self, artifact, places: list[Place], graph: onnx.ModelProto | None = None):
        """`graph`: the artifact's graph as it is searched (inlining.control_flow_inlined)."""
        import onnxruntime as ort

        from .artifact import SESSION_THREADS
        from .engines import ort_options

        self.artifact = artifact
        proto = graph if graph is not None else artifact.proto  # read only: `exposed` is a copy
        self.constants = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
        try:
            typed = onnx.shape_inference.infer_shapes(proto)
        except Exception:  # an artifact shape inference rejects: GRAPH-01's concern
            typed = proto
        known = {v.name: v for v in (*typed.graph.value_info, *typed.graph.input,
                                     *typed.graph.output)}
        outputs = [o.name for o in proto.graph.output]
        options = ort_options(SESSION_THREADS)
        # Tensors shape inference cannot type (after a custom domain's operator) are exposed
        # untyped, which ONNX Runtime types itself; if it cannot, their places are not seen.
        for typed_only in (False, True):
            self.places = [p for p in places if not typed_only or
                           all(t in known or t in self.constants for t in p.tensors)]
            wanted = sorted({t for p in self.places for t in p.tensors}
                            - set(self.constants) - set(outputs))
            exposed = onnx.ModelProto()
            exposed.CopyFrom(proto)
            exposed.graph.output.extend(known[t] if t in known
                                        else onnx.helper.make_empty_tensor_value_info(t)
                                        for t in wanted)
            try:
                self.session = ort.InferenceSession(exposed.SerializeToString(), options,
                                                    providers=["CPUExecutionProvider"])
                break
            except Exception:
                if typed_only:
                    raise
        self.unseen = [p for p in places if p not in self.places]
        self.names = outputs + wanted

    def values(self, obs: np.ndarray, masks: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every exposed tensor for a batch of flat observations (masks all allowed unless
        given; a recurrent graph from a zero state), and the constants."""
        art = self.artifact
        feed = np.ascontiguousarray(obs, dtype=art.obs.numpy_dtype)
        feeds = {art.obs.name: feed, **art._zero_state(len(feed))}
        if art.masks is not None:
            if masks is None:
                masks = np.ones((len(feed), art.masks.dims[1]), dtype=bool)
            feeds[art.masks.name] = np.ascontiguousarray(masks, dtype=art.masks.numpy_dtype)
        return {**self.constants, **dict(zip(self.names, self.session.run(self.names, feeds)))}

    def selection_ties(self, obs: np.ndarray) -> np.ndarray:
        """Per row of `obs`, run alone: does an ArgMax, ArgMin or TopK of the graph find its
        two best inputs within 1e-5 of their magnitude (at least 1e-5)? Its choice there is
        rounding: another batch size may round the other way."""
        tied = np.zeros(len(obs), dtype=bool)
        for k, row in enumerate(obs):
            values = self.values(row[None])
            for place in self.places:
                if place.op not in SELECTIONS:
                    continue
                count = ways(place, [values[t] for t in place.tensors], 1)[1]
                lead = np.max([margins(place, [values[t] for t in place.tensors], 1, way)
                               for way in range(count)], axis=0)
                scale = np.abs(np.asarray(values[place.tensors[0]], np.float64)).max()
                tied[k] |= bool((lead <= 1e-5 * max(scale, 1.0)).any())
        return tied


# --- coverage --------------------------------------------------------------------------------
@dataclass
class Seen:
    """The ways one place went, per element, over every row observed."""
    place: Place
    count: int
    ways: list[set[int]] = field(default_factory=list)
    flipped_by_search: bool = False

    def add(self, codes: np.ndarray) -> None:
        if not self.ways:
            self.ways = [set() for _ in range(codes.shape[1])]
        codes = codes[:, :len(self.ways)]
        if self.count:  # a few ways: which of them each element took, at once
            for way in range(self.count):
                for j in np.flatnonzero((codes == way).any(axis=0)):
                    self.ways[j].add(way)
            return
        for j, column in enumerate(codes.T):
            self.ways[j].update(np.unique(column).tolist())

    def missing(self) -> list[tuple[int, int]]:
        """(element, way) not seen yet; a step (count 0) needs two different values."""
        if self.count == 0:
            return [(j, -1) for j, seen in enumerate(self.ways) if len(seen) < 2]
        needed = needed_ways(self.place, self.count)
        return [(j, way) for j, seen in enumerate(self.ways) if len(seen) < len(needed)
                for way in sorted(needed - seen)]

    def lacks(self, element: int, way: int) -> bool:
        """Whether (element, way) is still one of `missing()` (without listing them all: a
        convolution's units are tens of thousands)."""
        seen = self.ways[element]
        return len(seen) < 2 if way == -1 else way not in seen

    @property
    def complete(self) -> bool:
        return not self.missing()


@dataclass
class Coverage:
    """What the suite's observations made of the graph's decisions."""
    seen: dict[int, Seen] = field(default_factory=dict)  # by Place.index
    batch_sizes: list[int] = field(default_factory=list)  # sizes that flip a batch decision
    rows: list[np.ndarray] = field(default_factory=list)  # rows found by the search
    searched: int = 0  # ways searched for
    budget_spent: bool = False
    not_run: str = ""  # why the graph could not be instrumented and run, if it could not
    # decisions whose values could not be exposed (inside an If, Loop or Scan body; or of a
    # type shape inference does not know, after a custom op): counted, named, not searched
    not_exposed: list[str] = field(default_factory=list)
    # operations on observation values the search does not model (decisions.NO_DECISION)
    not_modelled: list[str] = field(default_factory=list)
    # searches that stopped on an error (the suite's own, or a batch the graph cannot run): the
    # place or part of the search, and the error; the others go on
    failed: list[tuple[str, str]] = field(default_factory=list)
    # rows found (on either side of an argmax's boundary) where the graph's own choice is a
    # rounding tie (Instrumented.selection_ties)
    tied: np.ndarray | None = None

    @property
    def found(self) -> np.ndarray | None:
        """The rows the search found, or None."""
        return np.vstack(self.rows) if self.rows else None

    def observe(self, instrumented: Instrumented, values: dict, rows: int) -> None:
        for place in instrumented.places:
            codes, count = ways(place, [values[t] for t in place.tensors], rows)
            entry = self.seen.setdefault(place.index, Seen(place, count))
            entry.add(codes)

    def summary(self) -> dict:
        """Counts for the report: decisions and units, complete or not, and the places that
        were not seen every way."""
        def counted(kind):
            entries = [s for s in self.seen.values() if s.place.kind == kind]
            return entries, [s for s in entries if s.complete]

        decisions, both = counted("decision")
        units = [(s, j) for s in self.seen.values() if s.place.kind == "unit"
                 for j in range(len(s.ways))]
        missing_units = {(s.place.index, j) for s in self.seen.values()
                         if s.place.kind == "unit" for j, _ in s.missing()}
        guards = [s for s in self.seen.values() if s.place.kind == "guard"]
        return {
            "decisions": len(decisions) + len(self.not_exposed),
            "decisions_every_way": len(both),
            "units": len(units), "units_every_way": len(units) - len(missing_units),
            "guards": len(guards),
            "not_every_way": [f"{s.place.label}" for s in decisions if not s.complete]
            + [f"{label} (its values cannot be exposed: not searched)"
               for label in self.not_exposed]
            + [f"{what} (its search stopped on an error: {error})"
               for what, error in self.failed],
            "not_modelled": list(self.not_modelled),
            "batch_sizes_found": sorted(self.batch_sizes),
            "rows_found": sum(len(r) for r in self.rows),
            "search_budget_spent": self.budget_spent,
            "not_run": self.not_run,
        }


def mask_patterns(rows: int, width: int) -> list[np.ndarray]:
    """Masks for `rows` rows of `width` choices: all masked, then rows with one choice allowed
    and with all but one allowed (each choice in turn), then random halves."""
    rng = np.random.default_rng(0)
    one = np.eye(width, dtype=bool)[np.arange(rows) % width]
    return [np.zeros((rows, width), dtype=bool), one, ~one, rng.random((rows, width)) < 0.5]


# --- the search ------------------------------------------------------------------------------
# Values each float element is scanned across: zero, +-1, the magnitudes 1e-3 .. 3e38 of both
# signs, and the element's finite bounds with the floats around them.
SCAN_MAGNITUDES = tuple(10.0 ** k for k in range(-3, 39, 2)) + (3.4e38,)
# What a conjunction's margin adds of what each part lacks (see _condition_margin)
LACKING_SHARE = 1e-3
ZOOM_POINTS = 33
ZOOM_ROUNDS = 40
BISECTION_STEPS = 30
# Budgets in seconds of the searching thread's CPU time (time.thread_time), so that a busy
# machine does not cut a search short and change a verdict.
SEARCH_SECONDS = 2.0  # per policy; what is left unseen is reported
WAY_SECONDS = 0.25  # per way searched for
MAX_SCANNED_ELEMENTS = 64  # a larger observation scans this many of its elements
MAX_STARTS = 4
ONE_ROW_STARTS = 64  # pool rows a place on a sum over the rows starts its search from
MAX_ZOOMED_ELEMENTS = 4  # the elements whose scan moved the margin most
# Elements of the rows one scan or bisection holds at most (fewer elements scanned, or fewer
# boundaries bisected, for a large observation; none past it)
SCAN_ELEMENTS = 4_000_000
SCAN_VALUES = 3 + 2 * len(SCAN_MAGNITUDES) + 6  # as _scan_values makes them
ZOOM_PASSES = 3
# Integer elements (see Search._ascend_integers): at most this many tried one by one, a range
# this small tried at every value, passes of one change each, group tests to find them
MAX_INTEGER_ELEMENTS = 64
SMALL_RANGE = 16
INTEGER_PASSES = 64
GROUP_TESTS = 64


class Search:
    """Drive every decision of `instrumented` every way, over observations of `domain`
    (strategies.ObservationDomain)."""

    def __init__(self, instrumented: Instrumented, domain, seconds: float = SEARCH_SECONDS,
                 seed: int = 0):
        self.instrumented = instrumented
        self.domain = domain
        self.coverage = Coverage()
        self.deadline = self.way_deadline = time.thread_time() + seconds
        self.one_row_each = False  # see _observe
        self.rng = np.random.default_rng(seed)
        self.floats = np.flatnonzero(~domain.integral) if domain.integral is not None \
            else np.arange(domain.dim)
        self.integers = np.flatnonzero(domain.integral) if domain.integral is not None \
            else np.arange(0)
        self.group_of = {c: (start, stop) for start, stop in domain.one_hot
                         for c in range(start, stop)}

    def run(self, pool: np.ndarray) -> Coverage:
        """Observe `pool` (with mask patterns, for a masked graph), then search every way not
        seen, decisions before units; the rows found and the batch sizes that flip a batch
        decision are in the coverage returned."""
        pool_values = self._observe(pool)
        if self.instrumented.artifact.masks is not None:
            for masks in mask_patterns(len(pool), self.instrumented.artifact.masks.dims[1]):
                self._observe(pool, masks)
        self._going_on("the batch size search", self._search_batch_sizes, pool)
        for kind in ("decision", "unit"):
            wanted = [(entry, element, way) for entry in self.coverage.seen.values()
                      if entry.place.kind == kind and entry.place.on_values
                      for element, way in entry.missing()]
            for done, (entry, element, way) in enumerate(wanted):
                now = time.thread_time()
                if now > self.deadline:
                    self.coverage.budget_spent = True
                    return self.coverage
                if not entry.lacks(element, way):
                    continue  # seen on the way to another
                self.coverage.searched += 1
                # a decision may take its share of what is left, a unit a way's budget
                share = (self.deadline - now) / (len(wanted) - done) if kind == "decision" else 0
                self.way_deadline = min(self.deadline, now + max(WAY_SECONDS, share))
                # a place on a sum over the rows: searched with each row a batch of its own
                self.one_row_each = entry.place.on_batch
                rows = pool[:ONE_ROW_STARTS] if self.one_row_each else pool
                found = self._going_on(entry.place.label, lambda: self._search(
                    entry, element, way, rows,
                    self._observe(rows) if self.one_row_each else pool_values))
                self.one_row_each = False
                if found is not None:
                    entry.flipped_by_search = True
                    self._keep(found)
        self._going_on("the bisection between ways", self._boundaries, pool)
        return self.coverage

    def _going_on(self, what: str, search, *args):
        """`search(*args)`; on an error, None, with what stopped and why in the coverage, so
        that one place's search (or a batch the graph cannot run) does not end the others."""
        try:
            return search(*args)
        except Exception as exc:
            error = _error_line(exc, 160)
            if (what, error) not in self.coverage.failed:
                self.coverage.failed.append((what, error))
            return None

    def _out_of_time(self) -> bool:
        """Past the search's time budget (recorded), or past the budget of the way at hand."""
        now = time.thread_time()
        self.coverage.budget_spent |= now > self.deadline
        return now > min(self.deadline, self.way_deadline)

    def _observe(self, rows: np.ndarray, masks: np.ndarray | None = None) -> dict:
        if not self.one_row_each or len(rows) == 1:
            values = self.instrumented.values(rows, masks)
        else:  # each row a batch of its own, its exposed values one after the other
            runs = [self.instrumented.values(rows[i:i + 1], None if masks is None
                                             else masks[i:i + 1]) for i in range(len(rows))]
            values = {**runs[0], **{name: np.concatenate([np.atleast_1d(r[name]) for r in runs])
                                    for name in self.instrumented.names}}
        self.coverage.observe(self.instrumented, values, len(rows))
        return values

    def _keep(self, rows: np.ndarray) -> None:
        self.coverage.rows.append(np.asarray(rows, np.float32))

    def _margin(self, entry: Seen, values: dict, rows: int, element: int, way: int,
                seen: set | None = None):
        place = entry.place
        if way == -1:  # a step: move its input away from the values seen
            x = _per_row(np.asarray(values[place.tensors[0]], np.float64), rows)[:, element]
            seen = sorted(seen if seen is not None else entry.ways[element])
            return np.min(np.abs(x[:, None] - np.asarray(seen)[None]), axis=1) - 1.0
        m = margins(place, [values[t] for t in place.tensors], rows, way)
        return None if m is None else m[:, element]

    def _search(self, entry: Seen, element: int, way: int, pool: np.ndarray, values: dict):
        """Rows where `entry` goes `way` at `element`, by coordinate ascent of its margin from
        the pool rows (whose `values` are known) closest to it; None when not found."""
        margin = self._margin(entry, values, len(pool), element, way)
        if margin is None:
            return None
        for start in pool[np.argsort(-np.nan_to_num(margin, nan=-np.inf))[:MAX_STARTS]]:
            found = self._ascend(entry, element, way, start.astype(np.float64))
            if found is None and len(self.integers) and not self._out_of_time():
                found = self._ascend_integers(entry, element, way, start.astype(np.float64))
            if found is not None or self._out_of_time():
                return found
        return None

    def _ascend_integers(self, entry: Seen, element: int, way: int, row: np.ndarray):
        """From `row`: change one integer element (a pixel, a flag, a one-hot group's choice)
        at a time, each pass the change that brings the margin furthest, until the way is
        reached or no change brings it closer. The elements tried are those that move the
        margin (found by changing random groups of elements, for a large observation)."""
        found, m = self._try(entry, self.domain.finish(row[None]), element, way)
        if found is not None:
            return found
        current = float(np.nan_to_num(m[0], nan=-np.inf))
        found, columns = self._moving_integers(entry, element, way, row, current)
        if found is not None:
            return found
        most = max(1, SCAN_ELEMENTS // self.domain.dim)
        for _ in range(INTEGER_PASSES):
            if not len(columns) or self._out_of_time():
                return None
            rows = self._one_change_each(row, columns)
            if not len(rows):
                return None
            if len(rows) > most:
                rows = rows[np.sort(self.rng.choice(len(rows), most, replace=False))]
            found, m = self._try(entry, rows, element, way)
            if found is not None:
                return found
            m = np.nan_to_num(m, nan=-np.inf)
            best = int(np.argmax(m))
            if not m[best] > current:
                return None
            row, current = rows[best].astype(np.float64), float(m[best])
        return None

    def _one_change_each(self, row: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Rows that differ from `row` in one integer element of `columns` each: a binary or
        small-range element at each of its other values, a wider one by +-1, +-2, +-4, ...
        and at its bounds, a one-hot element switched on (its group's others off)."""
        changes = []
        for c in columns:
            low, high, value = self.domain.low[c], self.domain.high[c], row[c]
            if high - low <= SMALL_RANGE:
                values = np.arange(low, high + 1)
            else:
                steps = 2.0 ** np.arange(int(math.log2(high - low)) + 1)
                values = np.clip(np.concatenate([value + steps, value - steps, [low, high]]),
                                 low, high)
            changes.extend((c, v) for v in np.unique(values) if v != value)
        rows = np.repeat(row[None], len(changes), axis=0)
        for i, (c, v) in enumerate(changes):
            group = self.group_of.get(int(c))
            if group is not None:
                rows[i, group[0]:group[1]] = 0.0
            rows[i, c] = v
        return self.domain.finish(rows)

    def _moving_integers(self, entry: Seen, element: int, way: int, row: np.ndarray,
                         current: float):
        """(rows found on the way, or None; the integer elements whose change moves the
        margin): all of them, when there are few; otherwise group tests (rows that change
        random subsets of them, some dense, some sparse): an element changed in a row whose
        margin did not move is not one of them (a sample of those left, when most are)."""
        if len(self.integers) <= MAX_INTEGER_ELEMENTS:
            return None, self.integers
        tests = min(GROUP_TESTS, max(1, SCAN_ELEMENTS // self.domain.dim))
        rows = np.repeat(row[None], tests, axis=0)
        low, high = self.domain.low[self.integers], self.domain.high[self.integers]
        density = 0.5 ** (1 + 2 * (np.arange(tests) % 4))[:, None]  # 1/2, 1/8, 1/32, 1/128
        changed = self.rng.random((tests, len(self.integers))) < density
        fresh = np.floor(low + self.rng.random((tests, len(self.integers))) * (high - low + 1))
        rows[:, self.integers] = np.where(changed, fresh, rows[:, self.integers])
        rows = self.domain.finish(rows)
        found, m = self._try(entry, rows, element, way)
        if found is not None:
            return found, self.integers
        changed = rows[:, self.integers] != np.float32(row[self.integers])
        still = np.nan_to_num(m, nan=-np.inf) == current
        moving = self.integers[~changed[still].any(axis=0)]
        if len(moving) > MAX_INTEGER_ELEMENTS:
            moving = np.sort(self.rng.choice(moving, MAX_INTEGER_ELEMENTS, replace=False))
        if not len(moving):
            return None, moving
        # each one alone, to its far bound: the group tests' chance survivors drop out
        rows = np.repeat(row[None], len(moving), axis=0)
        far = np.where(row[moving] - self.domain.low[moving] > self.domain.high[moving]
                       - row[moving], self.domain.low[moving], self.domain.high[moving])
        rows[np.arange(len(moving)), moving] = far
        found, m = self._try(entry, self.domain.finish(rows), element, way)
        return found, moving[np.nan_to_num(m, nan=-np.inf) != current]

    def _ascend(self, entry: Seen, element: int, way: int, row: np.ndarray):
        """From `row`: scan every float element (a sample, for a large observation) across its
        magnitudes and bounds, then zoom in on the elements whose scan moved the margin, the
        most promising first, pass after pass (a conjunction needs each of its elements in
        turn)."""
        scanned = min(MAX_SCANNED_ELEMENTS, SCAN_ELEMENTS // (self.domain.dim * SCAN_VALUES))
        columns = self.floats
        if len(columns) > scanned:
            columns = np.sort(self.rng.choice(columns, scanned, replace=False))
        if not len(columns):  # no float element, or an observation too large to scan
            return None
        grid = np.column_stack([self._scan_values(columns), row[columns]])
        rows = np.repeat(row[None], grid.size, axis=0)
        rows[np.arange(len(rows)), np.repeat(columns, grid.shape[1])] = grid.reshape(-1)
        found, m = self._try(entry, self.domain.finish(rows), element, way)
        if found is not None:
            return found
        m = np.nan_to_num(m, nan=-np.inf).reshape(grid.shape)
        moved = np.flatnonzero(m.max(axis=1) > m.min(axis=1))
        moved = moved[np.argsort(-m[moved].max(axis=1))][:MAX_ZOOMED_ELEMENTS]
        if not len(moved):  # no element moves the margin: nothing to zoom in on
            return None
        row = row.copy()
        for i in moved:  # start each element at its best scanned value
            if m[i].max() > m[i, -1]:
                row[columns[i]] = grid[i, np.argmax(m[i])]
                break
        best = -np.inf
        for _ in range(ZOOM_PASSES):
            for i in moved:
                found, row, margin = self._zoom(entry, element, way, row, int(columns[i]))
                if found is not None or self._out_of_time():
                    return found
            if not margin > best:  # a pass that gained nothing: converged short of the way
                return None
            best = margin
        return None

    def _scan_values(self, columns: np.ndarray) -> np.ndarray:
        """[columns, values]: zero, +-1, signed magnitudes, each finite bound and the floats
        next to it."""
        low = self.domain.low[columns]
        high = self.domain.high[columns]
        fixed = np.array([0.0, 1.0, -1.0, *SCAN_MAGNITUDES, *(-m for m in SCAN_MAGNITUDES)])
        bounds = [np.where(np.isfinite(b), b, 0.0) for b in (low, high)]
        near = [np.nextafter(b.astype(np.float32), np.float32(s) * np.inf).astype(np.float64)
                for b in bounds for s in (-1, 1)]
        return np.column_stack([np.broadcast_to(fixed, (len(columns), len(fixed))),
                                *bounds, *near])

    def _try(self, entry: Seen, rows: np.ndarray, element: int, way: int):
        """Observe `rows`; (the rows where `entry` now goes `way` at `element` — for a step,
        any value not seen before — or None; the margins)."""
        before = set(entry.ways[element])
        values = self._observe(rows)
        codes, _ = ways(entry.place, [values[t] for t in entry.place.tensors], len(rows))
        hit = ~np.isin(codes[:, element], list(before)) if way == -1 \
            else codes[:, element] == way
        margin = self._margin(entry, values, len(rows), element, way, before)
        if hit.any():
            return rows[hit][:4], margin
        return None, margin

    def _zoom(self, entry: Seen, element: int, way: int, row: np.ndarray, column: int):
        """Zoom in on one element of `row`: a grid across an interval around the best value,
        which shrinks when that value is inside it and moves with it, twice as wide, when it is
        at an end. (rows found or None, the best row, its margin)."""
        value = float(row[column])
        half = max(abs(value), 1.0)
        margin = -np.inf
        largest = float(np.finfo(np.float32).max)
        for _ in range(ZOOM_ROUNDS):
            rows = np.repeat(row[None], ZOOM_POINTS, axis=0)
            rows[:, column] = np.clip(np.linspace(value - half, value + half, ZOOM_POINTS),
                                      -largest, largest)
            rows = self.domain.finish(rows)
            found, m = self._try(entry, rows, element, way)
            if found is not None:
                return found, row, np.inf
            m = np.nan_to_num(m, nan=-np.inf)
            best = np.flatnonzero(m == m.max())
            # the middle of a plateau: an element a conjunction needs inside a slab, while
            # another part decides the margin, is left in the slab's middle, not at its edge
            i = int(best[len(best) // 2])
            row, value, margin = rows[i].astype(np.float64), float(rows[i, column]), m[i]
            half = 2 * half / (ZOOM_POINTS - 1) if 0 < i < ZOOM_POINTS - 1 else 2 * half
            below_float32_step = not half > abs(value) * 2.0 ** -23
            if self._out_of_time() or below_float32_step or not math.isfinite(half):
                break
        return None, row, margin

    def _boundaries(self, pool: np.ndarray, most: int = 256) -> None:
        """For every decision seen more than one way, rows on either side of a boundary:
        bisect between two rows that went different ways (every pair at once)."""
        most = min(most, SCAN_ELEMENTS // self.domain.dim)
        rows = np.vstack([pool, *self.coverage.rows]) if self.coverage.rows else pool
        values = self.instrumented.values(rows)
        pairs = []  # (entry, element, the way row a went)
        first, second = [], []
        for entry in self.coverage.seen.values():
            if entry.place.kind != "decision" or not entry.place.on_values:
                continue
            codes, _ = ways(entry.place, [values[t] for t in entry.place.tensors], len(rows))
            for element, column in enumerate(codes.T):
                other = np.flatnonzero(column != column[0])
                if len(other) and len(pairs) < most:
                    pairs.append((entry, element, column[0]))
                    first.append(0)
                    second.append(other[0])
        if not pairs or self._out_of_time():
            return
        low, high = rows[first].astype(np.float64), rows[second].astype(np.float64)
        for _ in range(BISECTION_STEPS):
            middle = self.domain.finish((low + high) / 2).astype(np.float64)
            values = self._observe(middle)
            for i, (entry, element, way) in enumerate(pairs):
                codes, _ = ways(entry.place, [values[t] for t in entry.place.tensors],
                                len(middle))
                if codes[i, element] == way:
                    low[i] = middle[i]
                else:
                    high[i] = middle[i]
        self._keep(self.domain.finish(np.vstack([low, high])))

    def _search_batch_sizes(self, pool: np.ndarray) -> None:
        """Decisions that read only the batch size: run batches of sizes that bring each one's
        margin to the other way (a secant on the margin as a function of the size), and keep
        the sizes that flip one."""
        from .strategies import BATCH_SIZES, rows_for

        entries = [e for e in self.coverage.seen.values() if e.place.on_batch
                   and e.place.kind != "guard"]
        if not entries:
            return
        limit = rows_for(self.domain.dim, 1 << 16)
        tried: dict[int, dict] = {}
        refused: set[int] = set()  # sizes the graph cannot run (BEH-01's concern where listed)

        def at(size: int) -> dict | None:
            size = int(min(max(size, 1), limit))
            if size not in tried and size not in refused:
                rows = pool[np.arange(size) % len(pool)]
                values = self._going_on(f"the batch size search at {size} rows", self._observe,
                                        rows)
                if values is None:
                    refused.add(size)
                else:
                    tried[size] = values
            return tried.get(size)

        for size in (1, 2, 3, *BATCH_SIZES[-6:], *self._sizes_near_constants(entries, limit)):
            at(size)
        at(min(len(pool), limit))
        for entry in entries:
            for size in self._going_on(entry.place.label, self._sizes_meeting_rare_entries, entry, tried,
                                       limit) or ():
                if self._out_of_time():
                    break
                at(size)
        # where the sizes tried make a batch decision go more than one way, the smallest size
        # of each less common way is found already (a fault for one robot alone is decided at
        # size 1, which the first tries see)
        for entry in entries:
            codes = {size: self._batch_code(entry, tried[size], size) for size in sorted(tried)}
            if entry.place.lookup or len({c.shape for c in codes.values()}) == 1:
                patterns: dict[bytes, list[int]] = {}
                for size, code in codes.items():
                    patterns.setdefault(code.tobytes(), []).append(size)
                common = max(patterns.values(), key=len)
                self.coverage.batch_sizes.extend(sizes[0] for sizes in patterns.values()
                                                 if sizes is not common)
        for entry in entries:
            self._going_on(entry.place.label, self._secant, entry, tried, at, limit)
        self.coverage.batch_sizes = sorted(set(self.coverage.batch_sizes))

    @staticmethod
    def _sizes_meeting_rare_entries(entry: Seen, tried: dict, limit: int) -> list[int]:
        """For a lookup in a constant table: the sizes whose index meets each of its less
        common entries, the index taken as an affine function of the size (a * n + b, from
        two sizes tried that read different indices)."""
        rare = dict(entry.place.attributes).get("rare")
        if not rare:
            return []
        index = entry.place.tensors[1]
        read = {}
        for size, values in sorted(tried.items()):
            read.setdefault(float(np.ravel(values[index])[0]), size)
        if len(read) < 2:
            return []
        (i0, s0), (i1, s1) = list(read.items())[:2]
        a = (i1 - i0) / (s1 - s0)
        sizes = ((position - (i0 - a * s0)) / a for position in rare)
        return sorted({round(n) for n in sizes if abs(n - round(n)) < 1e-6 and 1 <= n <= limit})

    @staticmethod
    def _batch_code(entry: Seen, values: dict, size: int) -> np.ndarray:
        """The ways a batch decision went in a batch of `size` rows: its first row's (the size
        decides the same for every row), or, for a lookup in a table, the entries it read (in
        any row: a table read over a Range of the size reads one a row), each a way of its
        own."""
        if entry.place.lookup:
            return np.unique(np.asarray(values[entry.place.tensors[0]], np.float64))
        return ways(entry.place, [values[t] for t in entry.place.tensors], size)[0][0]

    def _secant(self, entry: Seen, tried: dict, at, limit: int) -> None:
        """The sizes where a batch decision's margin turns, by secant steps from the sizes
        tried; the sizes that make it go a missing way are kept."""
        for element, way in entry.missing():
            if way == -1 or self._out_of_time():
                continue
            margin = {s: self._margin(entry, tried[s], s, element, way) for s in sorted(tried)}
            margin = {s: float(m[0]) for s, m in margin.items() if m is not None}
            if len(margin) < 2:
                continue
            for _ in range(8):  # secant steps toward the size where the margin turns
                (s0, m0), (s1, m1) = sorted(margin.items(), key=lambda kv: -kv[1])[:2]
                if m1 == m0:
                    break
                guess = s1 - m1 * (s1 - s0) / (m1 - m0)
                if not math.isfinite(guess):
                    break
                for size in {math.floor(guess), math.ceil(guess), math.floor(guess) - 1,
                             math.ceil(guess) + 1}:
                    if 1 <= size <= limit and size not in margin and at(size) is not None:
                        margin[size] = float(self._margin(entry, tried[size], size, element,
                                                          way)[0])
                codes = {s: ways(entry.place, [tried[s][t] for t in entry.place.tensors],
                                 s)[0][0, element] for s in margin}
                hits = [s for s, c in codes.items() if c == way]
                if hits:
                    self.coverage.batch_sizes.extend(hits)
                    break

    @staticmethod
    def _sizes_near_constants(entries: list[Seen], limit: int, most: int = 32) -> list[int]:
        """Sizes a batch decision's own constants point to: each whole constant c from 1 to
        `limit` (a compared size, a Mod's divisor), its neighbours, and 2c and its neighbours
        (the next multiple), the smallest constants first."""
        constants = sorted({int(c) for e in entries for c in e.place.batch_constants
                            if c == int(c) and 1 <= c <= limit})[:most]
        return sorted({n for c in constants for n in (c - 1, c, c + 1, 2 * c - 1, 2 * c, 2 * c + 1)
                       if 1 <= n <= limit})


# Elements of the observations the coverage starts from, in each regime (at most 256 rows; an
# 84x84x4 frame stack gets 17).
POOL_ELEMENTS = 500_000


def cover(artifact, domain, seeds=(), seconds: float = SEARCH_SECONDS) -> Coverage:
    """The decision coverage of `artifact` over draws of every regime of `domain`, its probe
    and `seeds` (rows other searches found), then the search for every way not seen."""
    rng = np.random.default_rng(0)
    rows = max(16, min(256, POOL_ELEMENTS // domain.dim))
    pool = np.vstack([domain.probe(n=4 * rows), *seeds,
                      *(domain.sample(regime, rng, rows) for regime in domain.regimes)])

    def instrument(graph):
        """The graph run with its places exposed, and the places it does not model."""
        places = find_places(graph, artifact.obs.name if artifact.obs else "obs")
        made = Instrumented(artifact, [p for p in places if p.kind != "unmodelled"], graph)
        made.values(pool[:1])
        return made, [p.label for p in places if p.kind == "unmodelled"]

    graph = control_flow_inlined(artifact.proto)
    try:  # the artifact's own faults (it does not load or run) are the clauses' to report
        try:
            instrumented, not_modelled = instrument(graph)
        except Exception:
            if graph is artifact.proto:
                raise
            graph = artifact.proto  # what inlining made does not run: search the graph as is
            instrumented, not_modelled = instrument(graph)
        # (nor when it cannot run a batch the search runs)
        coverage = Search(instrumented, domain, seconds).run(pool)
    except Exception as exc:
        return Coverage(not_run=_error_line(exc, 200))
    coverage.not_exposed = [p.label for p in instrumented.unseen if p.kind == "decision"] + \
        _places_in_bodies(graph.graph)
    coverage.not_modelled = not_modelled
    if coverage.found is not None:
        coverage.tied = coverage.found[instrumented.selection_ties(coverage.found)]
    return coverage


def _error_line(exc: Exception, most: int) -> str:
    """An error as the report names it: its type and the first `most` characters of its
    message, on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:most]}"


def _places_in_bodies(graph: onnx.GraphProto) -> list[str]:
    """What may decide inside the bodies of If, Loop and Scan nodes (and theirs): decisions,
    piecewise-linear units and operations the search does not model. Their values cannot be
    graph outputs."""
    from .artifact import nodes_with_bodies

    return [f"{node.op_type} '{node.name or node.output[0]}' (in {inside})"
            for node, inside in nodes_with_bodies(graph)
            if inside and (_kind(node) is not None or node.op_type in COMPARISONS
                           or node.op_type in LOWER_EDGES or node.op_type in UNIT_RANGE
                           or not _decides_nothing(node, {}))]
