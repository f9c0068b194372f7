"""The reference exporter's own behaviour, apart from what the clauses check of its artifacts."""

from __future__ import annotations

import gc

import pytest
import torch

from torch.onnx._internal.exporter._registration import ONNXRegistry

from policy_onnx import export as exporter
from policy_onnx.load import load_model


def test_exports_share_one_operator_table_and_leave_torchs_alone(fixture_models, tmp_path):
    """The table of ONNX functions is built by the first export and given to the next ones:
    they make the artifact a table of their own makes, and outside the suite's exports torch
    builds its table anew (a caller may add its own operators to it)."""
    built_by_torch = ONNXRegistry.__dict__["from_torchlib"]
    loaded = load_model(fixture_models["ppo_default"])
    exporter._OPERATOR_TABLES.clear()
    fresh = exporter.export(loaded, tmp_path / "fresh.onnx").read_bytes()
    exporter.export(load_model(fixture_models["sac"]), tmp_path / "other.onnx")
    shared = exporter.export(loaded, tmp_path / "shared.onnx").read_bytes()
    assert len(exporter._OPERATOR_TABLES) == 1
    assert shared == fresh
    assert ONNXRegistry.__dict__["from_torchlib"] is built_by_torch
    assert ONNXRegistry.from_torchlib() is not ONNXRegistry.from_torchlib()


@pytest.mark.parametrize("enabled", [True, False])
def test_the_cycle_collector_waits_for_torchs_export_and_is_left_as_found(
        fixture_models, tmp_path, monkeypatch, enabled):
    during = []
    torch_export = torch.onnx.export

    def probed(*args, **kwargs):
        during.append(gc.isenabled())
        return torch_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", probed)
    loaded = load_model(fixture_models["ppo_default"])
    was = gc.isenabled()
    (gc.enable if enabled else gc.disable)()
    try:
        exporter.export(loaded, tmp_path / "policy.onnx")
        assert gc.isenabled() == enabled
    finally:
        (gc.enable if was else gc.disable)()
    assert during == [False]


def test_operators_a_caller_adds_stay_in_its_own_copy_of_the_table():
    with exporter._operator_table_built_once():
        mine = ONNXRegistry.from_torchlib(opset_version=18)
        before = {op: len(entries) for op, entries in mine.functions.items()}
        mine.register_op(torch.ops.aten.tanh.default, lambda x: x, is_complex=False)
        theirs = ONNXRegistry.from_torchlib(opset_version=18)
    assert {op: len(entries) for op, entries in theirs.functions.items()} == before
    tanh = torch.ops.aten.tanh.default.name()
    assert len(mine.functions[tanh]) == before[tanh] + 1


def test_exports_from_threads_wait_in_turn_and_leave_torchs_table_alone(fixture_models,
                                                                        tmp_path):
    """(A hostile read ran two exports in overlapping threads: the second restored the first's
    builder, and torch kept sharing the suite's table with every later caller.)"""
    import threading

    built_by_torch = ONNXRegistry.__dict__["from_torchlib"]
    names = ["ppo_default", "sac", "ppo_default", "sac"]
    models = [load_model(fixture_models[name]) for name in names]
    threads = [threading.Thread(target=exporter.export, args=(m, tmp_path / f"{i}.onnx"))
               for i, m in enumerate(models)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert ONNXRegistry.__dict__["from_torchlib"] is built_by_torch
    alone = exporter.export(models[0], tmp_path / "alone.onnx").read_bytes()
    assert (tmp_path / "0.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes() == alone
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "3.onnx").read_bytes()
