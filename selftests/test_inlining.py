"""The flat copy the decision search reads (inlining.control_flow_inlined) computes what the
artifact computes, and inlines only what does not depend on data."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from policy_onnx.inlining import MAX_UNROLLED_TRIPS, control_flow_inlined


def _loop_model(trips: int, keep_going: str = "keep_going") -> onnx.ModelProto:
    """acc = 2 * acc + x + trip, `trips` times from acc = x; a scan output stacks every acc;
    the body's condition output is `keep_going` (its input passed on) or another tensor."""
    scalar = []
    body = helper.make_graph(
        [helper.make_node("Cast", ["trip"], ["trip_f"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["acc", "two"], ["doubled"]),
         helper.make_node("Add", ["doubled", "x"], ["plus_x"]),
         helper.make_node("Add", ["plus_x", "trip_f"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["scanned"]),
         helper.make_node("ReduceMax", ["acc_out"], ["largest"], keepdims=0),
         helper.make_node("Less", ["largest", "limit"], ["below_limit"]),
         helper.make_node("Identity", [keep_going], ["keep_going_out"])],
        "body",
        [helper.make_tensor_value_info("trip", TensorProto.INT64, scalar),
         helper.make_tensor_value_info("keep_going", TensorProto.BOOL, scalar),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("keep_going_out", TensorProto.BOOL, scalar),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scanned", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two"),
         numpy_helper.from_array(np.array(50.0, np.float32), "limit")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "go", "x"], ["final", "stacked"], body=body)],
        "loop", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("final", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("stacked", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(trips, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "go")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("trips", [1, 3, MAX_UNROLLED_TRIPS])
def test_an_unrolled_loop_computes_what_the_loop_computes(trips):
    proto = _loop_model(trips)
    flat = control_flow_inlined(proto)
    assert not any(n.op_type == "Loop" for n in flat.graph.node)
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    for got, want in zip(_run(flat, x), _run(proto, x), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("proto", [_loop_model(MAX_UNROLLED_TRIPS + 1),
                                   _loop_model(3, keep_going="below_limit")],
                         ids=["too_many_trips", "stops_on_data"])
def test_a_loop_whose_course_is_not_fixed_stays(proto):
    assert control_flow_inlined(proto) is proto


def test_an_if_inside_an_inlined_branch_reads_the_renamed_tensors():
    """An If on a constant whose branch holds an If (on data) reading the branch's tensor by
    name: inlined, the inner If reads the tensor under its new name."""
    def branch(name, nodes, out):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
            out, TensorProto.FLOAT, None)])
    inner = helper.make_node(
        "If", ["positive"], ["chosen"],
        then_branch=branch("inner_then", [helper.make_node("Identity", ["doubled"], ["a"])], "a"),
        else_branch=branch("inner_else", [helper.make_node("Neg", ["doubled"], ["b"])], "b"))
    outer = helper.make_node(
        "If", ["always"], ["y"],
        then_branch=branch("then", [helper.make_node("Add", ["x", "x"], ["doubled"]), inner],
                           "chosen"),
        else_branch=branch("else", [helper.make_node("Identity", ["x"], ["c"])], "c"))
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
         helper.make_node("Greater", ["total", "zero"], ["positive"]), outer], "if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(True), "always"),
         numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    flat = control_flow_inlined(proto)
    assert [n.op_type for n in flat.graph.node].count("If") == 1
    for sign in (1.0, -1.0):
        x = sign * np.abs(np.random.default_rng(0).normal(size=(3, 4))).astype(np.float32)
        np.testing.assert_array_equal(_run(flat, x)[0], _run(proto, x)[0])
