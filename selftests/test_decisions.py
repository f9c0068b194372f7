"""Decision coverage of the artifact's own graph: the search reaches the decisions random draws
miss (a thin slab, a region behind an And, a range of batch sizes, far past a finite bound),
guards are counted and left alone, and the coverage shows in the summary, the JSON report and
JUnit properties."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import onnx
import pytest

from policy_onnx.artifact import Artifact
from policy_onnx.decisions import cover, find_places
from policy_onnx.export import export
from policy_onnx.load import load_model
from policy_onnx.model import Reference

from .mutants import BY_NAME, CONFORMING


def _mutated(name: str, fixture_models, tmp_path, corpus=BY_NAME):
    mutant = corpus[name]
    reference = Reference(load_model(fixture_models[mutant.model]))
    path = tmp_path / f"{name}.onnx"
    onnx.save(mutant.mutate(onnx.load(str(export(reference.loaded, tmp_path / "base.onnx")))),
              str(path))
    return reference, Artifact(path)


# The planted decision of each mutant (by its node), and what its found rows must satisfy.
REACHED = {
    "wrong_in_a_thin_slab": ("in_slab", lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_in_a_planted_region": ("dst", lambda rows: (rows[:, 0] > 2.3) & (rows[:, 0] < 2.3001)
                                  & (rows[:, 2] > 5)),
    "wrong_far_beyond_bounds": ("dst", lambda rows: (np.abs(rows).max(axis=1) > 22)
                                & (np.abs(rows).max(axis=1) < 9000)),
    "wrong_where_a_cast_to_bool_is_false": ("off_any", lambda rows: rows[:, 1]
                                            == np.float32(0.3712345)),
    "wrong_where_a_sign_is_zero": ("off_sign", lambda rows: rows[:, 1] == np.float32(0.3712345)),
    "wrong_in_a_slab_of_reductions": ("in_slab", lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_where_a_value_overflows": ("overflowed", lambda rows: (rows[:, 0] - 2.7) ** 2
                                      + (rows[:, 1] + 1.3) ** 2 < 1e30 / 3.4e38),
    "wrong_in_a_slab_of_pooling": ("pool_input", lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_where_a_float_onehot_index_is_in_range": ("hot", lambda rows: np.abs(
        rows[:, 0] * 1e6 - 3141592) < 2),
    "wrong_in_a_box_of_relu_products": ("above_a", lambda rows: (rows[:, 0] > 3.14159)
                                        & (rows[:, 0] < 3.1416) & (rows[:, 1] > -2.71829)
                                        & (rows[:, 1] < -2.71828)),
    "wrong_where_a_square_root_is_nan": ("root", lambda rows: np.abs(rows[:, 0] - 3.14159)
                                         < 1e-5),
    "wrong_in_a_slab_inside_a_loop": ("in_slab", lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_in_a_thin_slab_in_a_function": ("in_slab",
                                           lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_in_a_thin_slab_beside_a_shape_check": ("in_slab",
                                                  lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_in_a_thin_slab_beside_a_function_named_less": (
        "in_slab", lambda rows: np.abs(rows[:, 1] - 2.7) < 1e-5),
    "wrong_for_one_flag_pattern": ("flags_hit", lambda rows: (rows[:, :24]
                                                              == [1, 0] * 12).all(axis=1)),
    "wrong_at_two_pixel_values": ("corner_all", lambda rows: (rows[:, 0] == 37)
                                  & (rows[:, 5180] == 211)),
}


@pytest.mark.parametrize("name", REACHED)
def test_the_search_reaches_what_the_draws_miss(name, fixture_models, tmp_path):
    reference, artifact = _mutated(name, fixture_models, tmp_path)
    node, inside = REACHED[name]
    drawn = cover(artifact, reference.domain, seconds=0.0)  # the draws alone
    searched = cover(artifact, reference.domain)
    planted = [s for s in searched.seen.values() if s.place.op == "Where" or any(
        re.fullmatch(rf"(.*/)?{re.escape(node)}(__\d+)?", name)  # onnx's inliner adds __k
        for name in (s.place.node, *s.place.tensors))]
    assert planted and all(s.complete for s in planted), searched.summary()
    assert inside(searched.found).any()
    if name != "wrong_far_beyond_bounds":  # random draws reach that one too, now
        assert not all(drawn.seen[s.place.index].complete for s in planted), drawn.summary()


def test_the_search_finds_a_range_of_batch_sizes(fixture_models, tmp_path):
    reference, artifact = _mutated("wrong_for_batches_300_to_310", fixture_models, tmp_path)
    found = cover(artifact, reference.domain).batch_sizes
    assert any(300 <= size <= 310 for size in found) and len(found) <= 4, found


def test_the_search_finds_a_multiple_of_a_divisor_of_the_batch_size(fixture_models, tmp_path):
    reference, artifact = _mutated("wrong_for_multiples_of_4999", fixture_models, tmp_path)
    found = cover(artifact, reference.domain).batch_sizes
    assert any(size % 4999 == 0 for size in found), found


def test_a_guard_on_a_computed_value_is_a_decision(fixture_models, tmp_path):
    """A NaN guard on the action (the conforming twin): searched toward overflow, and named
    where no observation makes it go both ways, as any decision."""
    corpus = {m.name: m for m in CONFORMING}
    reference, artifact = _mutated("nan_guard", fixture_models, tmp_path, corpus)
    summary = cover(artifact, reference.domain).summary()
    assert summary["guards"] == 0 and summary["decisions"] == 1, summary


def test_an_operation_the_search_does_not_model_is_named():
    """A lookup keyed on observation values (GridSample) decides without a decision the
    search can read: it is named as not modelled."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Reshape", ["obs", "grid_shape"], ["grid"]),
         onnx.helper.make_node("GridSample", ["table", "grid"], ["looked_up"], mode="nearest"),
         onnx.helper.make_node("Reshape", ["looked_up", "flat"], ["action"])], "lookup",
        [onnx.helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", 2])],
        [onnx.helper.make_tensor_value_info("action", onnx.TensorProto.FLOAT, ["batch", 1])],
        [onnx.numpy_helper.from_array(np.eye(3, dtype=np.float32)[None, None], "table"),
         onnx.numpy_helper.from_array(np.array([-1, 1, 1, 2], np.int64), "grid_shape"),
         onnx.numpy_helper.from_array(np.array([-1, 1], np.int64), "flat")])
    places = find_places(onnx.helper.make_model(graph))
    assert [(p.label, p.kind) for p in places] == [("GridSample 'looked_up'", "unmodelled")]


@pytest.mark.parametrize("activations, named", [(None, False), (["Relu", "Relu", "Relu"], True)],
                         ids=["smooth", "relu_gates"])
def test_a_recurrent_operator_is_modelled_only_with_smooth_activations(activations, named):
    """An LSTM with Relu activations can carve a slab (Relu(x - a) Relu(b - x) in its
    cell): named as not modelled; with its default activations it decides nothing."""
    hidden = 2
    weights = [onnx.numpy_helper.from_array(np.ones((1, 4 * hidden, n), np.float32), name)
               for name, n in (("W", 3), ("R", hidden))]
    extra = {"activations": activations} if activations else {}
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Unsqueeze", ["obs", "zero"], ["sequence"]),
         onnx.helper.make_node("LSTM", ["sequence", "W", "R"], ["Y"], hidden_size=hidden,
                               **extra)], "lstm",
        [onnx.helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", 3])],
        [onnx.helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
        [*weights, onnx.numpy_helper.from_array(np.array([0], np.int64), "zero")])
    places = find_places(onnx.helper.make_model(graph))
    assert [(p.op, p.kind) for p in places] == ([("LSTM", "unmodelled")] if named else [])


def test_a_guard_on_the_observation_is_counted_and_not_searched():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("IsNaN", ["obs"], ["missing"]),
         onnx.helper.make_node("Where", ["missing", "zero", "obs"], ["action"])], "guard",
        [onnx.helper.make_tensor_value_info("obs", onnx.TensorProto.FLOAT, ["batch", 2])],
        [onnx.helper.make_tensor_value_info("action", onnx.TensorProto.FLOAT, ["batch", 2])],
        [onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    places = find_places(onnx.helper.make_model(graph))
    assert [(p.op, p.kind) for p in places] == [("IsNaN", "guard")], places


def test_coverage_shows_in_the_summary_the_report_and_junit(conformance, fixture_models,
                                                            tmp_path):
    """A DQN whose last action no observation makes best (the fixture's own export): its
    ArgMax is named as not seen every way, and nothing fails for it."""
    report, junit = tmp_path / "report.json", tmp_path / "junit.xml"
    run = conformance.run("--model", str(fixture_models["dqn"]), "--report", str(report),
                          f"--junitxml={junit}")
    assert run.ret == 0, run.stdout
    line = re.search(r"decisions in the graph: (\d+), seen every way: (\d+); piecewise-linear "
                     r"units: (\d+), every way: (\d+)", run.stdout)
    assert line and line.groups()[:2] == ("1", "0"), run.stdout
    assert "not seen every way (the suite could not drive them; a fault behind them would go " \
           "unseen): ArgMax 'node_argmax'" in run.stdout
    coverage = json.loads(report.read_text())["policies"][0]["decision_coverage"]
    assert (coverage["decisions"], coverage["decisions_every_way"]) == (1, 0)
    assert coverage["not_every_way"] == ["ArgMax 'node_argmax'"]
    assert coverage["units"] == int(line.group(3))
    properties = {p.get("name"): p.get("value") for p in ElementTree.parse(junit).iter("property")}
    assert properties["coverage_decisions"] == "1"
    assert properties["coverage_not_every_way"] == "ArgMax 'node_argmax'"
