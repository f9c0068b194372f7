"""Control flow whose course does not depend on data, written out flat: an If on a constant
becomes the branch it always takes, a Loop of a small constant trip count that cannot stop
early becomes one copy of its body per trip. The decision coverage (decisions.py) reads the
flat graph, so that the decisions inside those bodies are exposed and searched like any
other; the artifact itself is never changed."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Loops of at most this many trips are unrolled; longer ones stay (named "not searched").
MAX_UNROLLED_TRIPS = 16
# Inlining goes on while it changes something, up to this many nodes in the flat copy.
MAX_INLINED_NODES = 100_000


def constant_values(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's initializers and the outputs of its Constant nodes (read when needed: the
    weights may be outside the file)."""
    values = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = node.attribute[0].t
    return values


def scalar_value(constants: dict, name: str):
    """The one value of constant `name`, or None (not a constant of one element, or
    unreadable). Larger constants are not read: weights may be large, or outside the file."""
    if name not in constants or np.prod(constants[name].dims, dtype=np.int64) != 1:
        return None
    try:
        return np.ravel(numpy_helper.to_array(constants[name]))[0].item()
    except Exception:
        return None


def _body(node: onnx.NodeProto, name: str) -> onnx.GraphProto | None:
    return next((a.g for a in node.attribute if a.name == name), None)


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)]


def _defined(graph: onnx.GraphProto) -> set[str]:
    return ({t for n in graph.node for t in n.output} | {i.name for i in graph.initializer}
            | {i.name for i in graph.input})


def outer_names(node: onnx.NodeProto) -> set[str]:
    """The tensors of the enclosing graph that the bodies of `node` (and theirs) read by name,
    besides its explicit inputs."""
    names = set()
    for body in _bodies(node):
        inside = _defined(body)
        for inner in body.node:
            names |= {t for t in (*inner.input, *outer_names(inner)) if t and t not in inside}
        names |= {o.name for o in body.output if o.name not in inside}
    return names


def _renamed_outer_references(body: onnx.GraphProto, rename) -> None:
    """Rename, in place, what `body` (and the bodies inside it) read from enclosing graphs."""
    inside = _defined(body)
    for node in body.node:
        node.input[:] = [t if not t or t in inside else rename(t) for t in node.input]
        for inner in _bodies(node):
            _renamed_outer_references(inner, lambda t: t if t in inside else rename(t))
    for output in body.output:
        if output.name not in inside:
            output.name = rename(output.name)


def _copied(body: onnx.GraphProto, prefix: str, bound: dict[str, str], extra: list):
    """The nodes of `body` with its own tensors renamed apart by `prefix` (in the bodies
    inside them too) and its inputs bound to the tensors `bound` names; its initializers,
    renamed, go to `extra`. Returns (nodes, the outer name of each of the body's outputs)."""
    inner = {t for n in body.node for t in n.output} | {i.name for i in body.initializer}

    def outer(name: str) -> str:
        if name in bound:
            return bound[name]
        return prefix + name if name in inner else name

    for initializer in body.initializer:
        renamed = TensorProto()
        renamed.CopyFrom(initializer)
        renamed.name = prefix + initializer.name
        extra.append(renamed)
    nodes = []
    for inner_node in body.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner_node)
        copy.input[:] = [outer(t) if t else t for t in inner_node.input]
        copy.output[:] = [prefix + t if t else t for t in inner_node.output]
        copy.name = prefix + (inner_node.name or inner_node.output[0])
        for nested in _bodies(copy):
            _renamed_outer_references(nested, outer)
        nodes.append(copy)
    return nodes, [outer(o.name) for o in body.output]


def _if_inlined(node, constants, prefix, initializers):
    condition = scalar_value(constants, node.input[0])
    branch = _body(node, "then_branch" if condition else "else_branch")
    if condition is None or branch is None:
        return None
    nodes, sources = _copied(branch, prefix, {}, initializers)
    return nodes + [helper.make_node("Identity", [s], [o]) for s, o in zip(sources, node.output)]


def _keeps_going(body: onnx.GraphProto, constants: dict) -> bool:
    """Whether a Loop body's condition output is its condition input, passed on, or true."""
    condition_in, condition_out = body.input[1].name, body.output[0].name
    constants = {**constants, **constant_values(body)}
    producer = next((n for n in body.node if condition_out in n.output), None)
    if producer is not None and producer.op_type == "Identity":
        condition_out = producer.input[0]
    return condition_out == condition_in or scalar_value(constants, condition_out) is True


def _loop_unrolled(node, constants, prefix, initializers, opset: int):
    trips = scalar_value(constants, node.input[0]) if node.input[0] else None
    body = _body(node, "body")
    condition = scalar_value(constants, node.input[1]) if len(node.input) > 1 and node.input[1] \
        else True
    if not isinstance(trips, int) or not 1 <= trips <= MAX_UNROLLED_TRIPS or body is None \
            or condition is not True or not _keeps_going(body, constants):
        return None
    carried = list(node.input[2:])
    true_name, nodes, scans = prefix + "true", [], []
    initializers.append(numpy_helper.from_array(np.array(True), true_name))
    for trip in range(trips):
        trip_prefix = f"{prefix}{trip}/"
        iteration = trip_prefix + "iteration"
        initializers.append(numpy_helper.from_array(np.array(trip, np.int64), iteration))
        bound = {body.input[0].name: iteration, body.input[1].name: true_name,
                 **{b.name: c for b, c in zip(body.input[2:], carried)}}
        copied, sources = _copied(body, trip_prefix, bound, initializers)
        nodes += copied
        carried = sources[1:1 + len(carried)]
        scans.append(sources[1 + len(node.input[2:]):])
    nodes += [helper.make_node("Identity", [c], [o]) for c, o in zip(carried, node.output)]
    axes = prefix + "axes"
    initializers.append(numpy_helper.from_array(np.array([0], np.int64), axes))
    for k, out in enumerate(node.output[len(carried):]):
        stacked = []
        for trip, sources in enumerate(scans):
            name = f"{prefix}{trip}/scan_{k}"
            nodes.append(helper.make_node("Unsqueeze", [sources[k], axes], [name]) if opset >= 13
                         else helper.make_node("Unsqueeze", [sources[k]], [name], axes=[0]))
            stacked.append(name)
        nodes.append(helper.make_node("Concat", stacked, [out], axis=0))
    return nodes


def control_flow_inlined(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` in which each call of a function the model defines is replaced by the
    function's nodes (as ONNX Runtime runs it), every If on a constant of the main graph by the
    branch it takes, and every Loop of a constant trip count of at most MAX_UNROLLED_TRIPS,
    entered on a constant true and whose body passes its condition on, by a copy of its body
    per trip (tensors renamed apart, in the bodies inside them too). What is inlined may hold
    more of them: passes go on until none changes anything, or the copy holds MAX_INLINED_NODES
    nodes. `proto` itself when there is nothing to inline."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    current = _functions_inlined(proto)
    for round_ in itertools.count():
        if len(current.graph.node) > MAX_INLINED_NODES:
            break
        constants = constant_values(current.graph)
        initializers, nodes, changed = [], [], False
        for k, node in enumerate(current.graph.node):
            prefix = f"inlined_{round_}_{k}/"
            flat = _if_inlined(node, constants, prefix, initializers) if node.op_type == "If" \
                else _loop_unrolled(node, constants, prefix, initializers, opset) \
                if node.op_type == "Loop" else None
            changed |= flat is not None
            nodes += [node] if flat is None else flat
        if not changed:
            break
        if current is proto:
            current = onnx.ModelProto()
            current.CopyFrom(proto)
        current.graph.initializer.extend(initializers)
        del current.graph.node[:]
        current.graph.node.extend(nodes)
    return current


def _functions_inlined(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with the calls of its own functions written out (onnx's inliner), or
    `proto` itself when it defines none or they cannot be written out (the search then reads
    each call as an operation it does not model). A function of the default domain is left
    out: ONNX Runtime runs the standard operator of its name, not the function."""
    own = [f for f in proto.functions if f.domain not in ("", "ai.onnx")]
    if not own:
        return proto
    from onnx.inliner import inline_local_functions

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.functions[:]
    copy.functions.extend(own)
    try:
        return inline_local_functions(copy)
    except Exception:
        return proto
