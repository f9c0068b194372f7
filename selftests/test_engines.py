"""The engines of the PORT clauses (engines.py) on small graphs, and --runtime as a user gives
it. The PORT mutants and their conforming twins are in mutants.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from policy_onnx import engines

from .conftest import REAL_MODEL, REAL_ONNX


def _model(nodes, output_type=TensorProto.FLOAT, initializers=(), opset=20, domains=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", 3])],
                              [helper.make_tensor_value_info("y", output_type, None)],
                              [numpy_helper.from_array(np.asarray(v), name)
                               for name, v in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                   *(helper.make_opsetid(d, 1) for d in domains)])


def _reference(model, flip_ties=False):
    return engines.StrictReference(model, flip_ties)


@pytest.mark.parametrize("value", [np.nan, np.inf, 3e9, -3e9])
def test_a_cast_the_specs_leave_to_the_engine_ends_the_run(value):
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32, name="c")],
                   TensorProto.INT32)
    x = np.array([[1.5, -2.5, value]], np.float32)
    with pytest.raises(engines.EngineDependent, match="Cast node 'c' converts"):
        _reference(model).run(None, {"x": x})


def test_a_cast_within_range_runs():
    model = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT32)],
                   TensorProto.INT32)
    (y,) = _reference(model).run(None, {"x": np.array([[1.5, -2.5, 2e9]], np.float32)})
    assert y.tolist() == [[1, -2, 2000000000]]


def test_a_clip_with_min_above_max_ends_the_run():
    model = _model([helper.make_node("Clip", ["x", "low", "high"], ["y"], name="k")],
                   initializers=[("low", np.float32(1)), ("high", np.float32(0))])
    with pytest.raises(engines.EngineDependent, match="Clip node 'k' has min"):
        _reference(model).run(None, {"x": np.zeros((2, 3), np.float32)})


@pytest.mark.parametrize("last", [0, 1])
def test_argmax_ties_are_noted_and_broken_the_other_way_on_request(last):
    model = _model([helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0, name="a",
                                     select_last_index=last)], TensorProto.INT64)
    x = np.array([[1.0, 3.0, 3.0], [0.0, 2.0, 1.0]], np.float32)
    plain, flipped = _reference(model), _reference(model, flip_ties=True)
    assert plain.run(None, {"x": x})[0].tolist() == [2 if last else 1, 1]
    assert plain.tied == {"a"}
    assert flipped.run(None, {"x": x})[0].tolist() == [1 if last else 2, 1]


def test_operators_of_another_domain_or_a_newer_opset_are_named():
    contrib = _model([helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft",
                                       name="f")], initializers=[("w", np.eye(3, dtype=np.float32))],
                     domains=("com.microsoft",))
    assert engines.operator_problems(contrib) == \
        ["FusedMatMul of domain 'com.microsoft' (node 'f')"]
    newer = _model([helper.make_node("Gelu", ["x"], ["y"], name="g")], opset=17)
    assert engines.operator_problems(newer) == ["Gelu does not exist at the declared opset 17 "
                                                "(node 'g')"]
    assert engines.operator_problems(_model([helper.make_node("Gelu", ["x"], ["y"])])) == []


def test_a_model_function_is_judged_by_its_body():
    body = onnx.helper.make_function("local", "Twice", ["a"], ["b"],
                                     [helper.make_node("Add", ["a", "a"], ["b"])],
                                     [helper.make_opsetid("", 20)])
    model = _model([helper.make_node("Twice", ["x"], ["y"], domain="local")], domains=("local",))
    model.functions.append(body)
    assert engines.operator_problems(model) == []


@pytest.mark.parametrize("option, message", [
    ("tract,foo", "--runtime tract,foo: unknown runtime 'foo'; the suite runs tract, openvino"),
    ("tract", "--runtime tract: tract is not installed: pip install policy-onnx[runtimes]")])
def test_a_runtime_unknown_or_not_installed_is_a_usage_error(conformance, monkeypatch, option,
                                                             message):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tract" else real(name, *a))
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "--runtime",
                          option)
    assert run.ret == 4 and message in run.stderr, run.stderr


def test_each_runtime_gets_a_verdict(conformance, tmp_path):
    """The real pair: both runtimes load and match, in the header, the terminal, JSON, JUnit
    and the page."""
    import json
    import xml.etree.ElementTree as ET

    report, junit, page = tmp_path / "report.json", tmp_path / "junit.xml", tmp_path / "p.html"
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX), "--runtime",
                          "tract,openvino", "--report", str(report), "--junitxml", str(junit),
                          "--html", str(page))
    assert run.ret == 0 and run.verdicts["PORT-04"] == "passed", run.stdout
    [policy] = json.loads(report.read_text())["policies"]
    assert list(policy["runtimes"].values()) == ["loads and matches"] * 2
    assert "runtimes (PORT-04): tract " in run.stdout  # the header
    text = page.read_text()
    assert "<h3>Runtimes (PORT-04)</h3>" in text
    for engine in policy["runtimes"]:
        assert f"runtime {engine}: loads and matches" in run.stdout
        assert f"<td>{engine}</td><td>loads and matches</td>" in text
    assert policy["statistics"]["PORT-04"]["observations"] > 10_000
    properties = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert {k: v for k, v in properties.items() if k.startswith("runtime ")} == \
        {f"runtime {engine}": "loads and matches" for engine in policy["runtimes"]}


# One fixture model of each family the real agents do not cover (masks, recurrent state, images,
# multi-discrete and binary actions)
FAMILIES = ("maskable_ppo", "maskable_multiinput", "recurrent_ppo", "recurrent_ppo_discrete",
            "ppo_cnn", "dqn_cnn", "a2c_multidiscrete", "ppo_multibinary", "ppo_multiinput")


@pytest.mark.slow  # the real agents and a zoo of fixtures in two more engines: `make test-slow`
def test_every_family_and_real_agent_loads_and_matches_in_each_runtime(conformance,
                                                                       fixture_models, tmp_path):
    """Measured here: every real agent, and a model of every family, loads in tract and
    OpenVINO and acts like predict() there (the page and the JSON say so per model)."""
    import json
    import shutil

    from .conftest import ZOO

    tree = tmp_path / "agents"
    shutil.copytree(ZOO, tree)
    for name in FAMILIES:
        shutil.copy(fixture_models[name], tree)
    report = tmp_path / "report.json"
    run = conformance.run("--model", str(tree), "--runtime", "tract,openvino", "--report",
                          str(report), "-n", "2")
    assert run.ret == 0, run.stdout[-3000:]
    policies = json.loads(report.read_text())["policies"]
    assert len(policies) == 10 + len(FAMILIES)
    for policy in policies:
        assert list(policy["runtimes"].values()) == ["loads and matches"] * 2, policy["name"]
        assert policy["statistics"]["PORT-04"]["observations"] > 0, policy["name"]
