"""Faults that show only on frame stacks as large as Atari's (84x84x4 = 28,224 elements: the
probe and the largest batch BEH-02 runs are then both 297 rows), kept from a hostile read of the
suite's own speed-ups. Each builds its model, exports it with the suite's exporter and breaks
the graph the way an exporter could; slow (`make test-slow`)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from stable_baselines3 import PPO

from fixtures.models import SpacesEnv, image
from policy_onnx.export import export
from policy_onnx.load import load_model

pytestmark = pytest.mark.slow
IDENTICAL_ROWS = 60  # a batch with at least this many rows that repeat another flips the argmax


def _wrong_on_many_identical_frames(proto: onnx.ModelProto) -> onnx.ModelProto:
    """argmin instead of argmax on every row of a batch in which IDENTICAL_ROWS or more
    non-constant rows each equal another row of the batch (many environments showing the same
    frame after a reset). The rows are counted with MatMul, not Shape, Size or a reduction
    over the batch, so that the decision search sees no batch decision."""
    graph = proto.graph
    obs = graph.input[0].name
    width = graph.input[0].type.tensor_type.shape.dim[1].dim_value
    argmax = next(n for n in graph.node if n.op_type == "ArgMax" and n.output[0] == "action")
    fingerprint = np.random.default_rng(1).integers(1, 2 ** 19, (width, 1)).astype(np.float64)
    graph.initializer.extend([
        numpy_helper.from_array(fingerprint, "fingerprint"),
        numpy_helper.from_array(np.array([1], np.int64), "row_axis"),
        numpy_helper.from_array(np.array(0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1, np.float32), "one"),
        numpy_helper.from_array(np.array(IDENTICAL_ROWS - 1, np.float32), "threshold"),
        numpy_helper.from_array(np.array(2, np.float32), "two")])
    node = helper.make_node
    counting = [
        node("Cast", [obs], ["as_double"], to=TensorProto.DOUBLE),
        node("MatMul", ["as_double", "fingerprint"], ["hash"]),  # [N, 1], exact
        node("Transpose", ["hash"], ["hash_row"], perm=[1, 0]),
        node("Equal", ["hash", "hash_row"], ["same"]),  # [N, N]
        node("Cast", ["same"], ["same_float"], to=TensorProto.FLOAT),
        node("ReduceMax", [obs, "row_axis"], ["row_max"], keepdims=1),
        node("ReduceMin", [obs, "row_axis"], ["row_min"], keepdims=1),
        node("Sub", ["row_max", "row_min"], ["row_range"]),
        node("Clip", ["row_range", "zero", "one"], ["varied"]),  # 1 for a non-constant row
        node("MatMul", ["same_float", "varied"], ["copies"]),
        node("Sub", ["copies", "one"], ["others"]),
        node("Clip", ["others", "zero", "one"], ["repeated"]),  # [N, 1]
        node("Transpose", ["repeated"], ["repeated_row"], perm=[1, 0]),
        node("MatMul", ["repeated_row", "repeated"], ["how_many"]),  # [1, 1]
        node("Sub", ["how_many", "threshold"], ["past"]),
        node("Clip", ["past", "zero", "one"], ["flipping"]),
        node("Mul", ["flipping", "two"], ["twice"]),
        node("Sub", ["one", "twice"], ["sign"]),  # 1, or -1 past the threshold
        node("Mul", [argmax.input[0], "sign"], ["flipped_scores"])]
    argmax.input[0] = "flipped_scores"
    at = list(graph.node).index(argmax)
    for offset, made in enumerate(counting):
        graph.node.insert(at + offset, made)
    onnx.checker.check_model(proto)
    return proto


def test_an_artifact_wrong_only_on_batches_of_many_identical_frames_fails_beh_02(
        tmp_path, conformance):
    """A batch whose rows repeat (the probe's first 64, cycled) must be among BEH-02's, for a
    frame stack too: with its batches drawn from the whole probe this artifact passed."""
    model = PPO("CnnPolicy", SpacesEnv(image(84, 84, 4), gym.spaces.Discrete(4)), n_steps=8,
                batch_size=8, seed=0, device="cpu",
                policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}})
    with torch.no_grad():  # clear choices: the flip changes the action, not a tie
        model.policy.action_net.weight.mul_(10.0)
        model.policy.action_net.bias.mul_(10.0)
    model.save(tmp_path / "frames.zip")
    artifact = export(load_model(tmp_path / "frames.zip"), tmp_path / "frames.onnx")
    onnx.save(_wrong_on_many_identical_frames(onnx.load(str(artifact))),
              str(tmp_path / "broken.onnx"))
    run = conformance.run("--model", str(tmp_path / "frames.zip"),
                          "--onnx", str(tmp_path / "broken.onnx"), "-k", "BEH")
    assert run.verdicts["BEH-02"] == "failed", run.stdout[-3000:]
    assert "rows differ" in run.messages["BEH-02"]
    assert run.verdicts["BEH-01"] == "passed"
