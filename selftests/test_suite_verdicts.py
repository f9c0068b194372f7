"""The suite passes conforming artifacts and fails the clauses a broken artifact violates."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest

from fixtures.models import FIXTURES
from policy_onnx import spec
from policy_onnx.export import export
from policy_onnx.load import STRUCTURES, load_model
from policy_onnx.observations import ObservationLayout

from .conftest import CONFORMANCE, REAL_MODEL, REAL_ONNX, sha256, unclamped

ALL = {c.id for c in spec.CLAUSES}
NEEDS_MODEL = {c.id for c in spec.CLAUSES if c.needs_model}
KIND = {f.name: type(f.action_space).__name__ for f in FIXTURES}
STRUCTURE = {f.name: STRUCTURES.get(f.algorithm, "plain") for f in FIXTURES}
# Models whose mean is never clipped: PAR-02 is reported as not applicable, with this reason.
NO_CLIPPING = {f.name: f.no_clipping for f in FIXTURES if f.no_clipping}
NORMALIZED = {f.name for f in FIXTURES if f.normalization}
# Models whose VecNormalize clips no observation (clip_obs = inf): NORM-02 is reported as not
# applicable, with this reason.
UNCLIPPED = {f.name: f.unclipped for f in FIXTURES if f.unclipped}
FEATURES = {f.name: ObservationLayout(f.observation_space).features for f in FIXTURES}
# The options a fixture is exported with: its image layout when it is not the default.
OPTIONS = {f.name: ("--image-layout", f.image_layout) if f.image_layout != "HWC" else ()
           for f in FIXTURES}


def not_applicable(kind: str, structure: str = "plain", normalized: bool = False,
                   features: frozenset[str] = frozenset()) -> dict[str, str]:
    return {**{c.id: "not applicable" for c in spec.CLAUSES
               if not c.applies(kind, structure, features)
               or (c.needs_normalization and not normalized)},
            "PORT-04": "no runtime named"}


def expected_skips(name: str) -> dict[str, str]:
    skips = not_applicable(KIND[name], STRUCTURE[name], name in NORMALIZED, FEATURES[name])
    if name in NO_CLIPPING and "PAR-02" not in skips:
        skips["PAR-02"] = NO_CLIPPING[name]
    if name in UNCLIPPED:
        skips["NORM-02"] = UNCLIPPED[name]
    return skips


def assert_all_pass(run, skipped: dict[str, str], status: int = 0) -> None:
    assert run.with_outcome("failed") | run.with_outcome("error") == set(), run.stdout
    assert set(run.verdicts) == ALL
    assert run.with_outcome("skipped") == set(skipped), run.messages
    for clause_id, reason in skipped.items():
        assert reason in run.messages[clause_id]
    assert run.ret == status


# The slowest own exports (recurrent rollouts, images) run in `make test-slow`.
SLOW_OWN_EXPORTS = {"recurrent_multiinput", "recurrent_cnn", "recurrent_ppo_discrete",
                    "recurrent_ppo", "ppo_cnn", "dqn_cnn", "qrdqn_cnn", "sac_cnn",
                    "trpo_cnn_channel_first", "maskable_multiinput"}


@pytest.mark.parametrize("name", [pytest.param(f.name, marks=pytest.mark.slow)
                                  if f.name in SLOW_OWN_EXPORTS else f.name for f in FIXTURES])
def test_own_export_of_every_fixture_model_conforms(conformance, fixture_models, name):
    run = conformance.run("--model", str(fixture_models[name]), *OPTIONS[name],
                          profile="mutation")
    assert_all_pass(run, expected_skips(name))
    if name not in NO_CLIPPING:
        assert "with the mean outside the action bounds" in run.stdout


def test_real_pair_conforms_as_given(conformance):
    before = sha256(REAL_MODEL), sha256(REAL_ONNX)
    run = conformance.run("--model", str(REAL_MODEL), "--onnx", str(REAL_ONNX))
    assert_all_pass(run, not_applicable("Box"))
    assert (sha256(REAL_MODEL), sha256(REAL_ONNX)) == before


def test_real_model_through_our_exporter_conforms(conformance):
    assert_all_pass(conformance.run("--model", str(REAL_MODEL)), not_applicable("Box"))


def test_onnx_alone_skips_exactly_the_clauses_that_need_the_model(conformance):
    run = conformance.run("--onnx", str(REAL_ONNX))
    # Nothing fails, but without the model no level is established: exit status 1.
    assert_all_pass(run, {**not_applicable("Box"), **{cid: "needs --model" for cid in NEEDS_MODEL}},
                    status=1)


def test_image_artifact_alone_is_probed_with_pixels(conformance, fixture_models, tmp_path):
    """Without the model, the behaviour clauses draw from the observation space an image
    artifact declares: an artifact that gives NaN only past the pixel range (as
    image_nan_past_pixel_range, a conforming twin) passes them, as it does with the model."""
    from .mutants import CONFORMING

    twin = next(m for m in CONFORMING if m.name == "image_nan_past_pixel_range")
    path = tmp_path / "image.onnx"
    base = export(load_model(fixture_models[twin.model]), tmp_path / "base.onnx")
    onnx.save(twin.mutate(onnx.load(str(base))), str(path))
    run = conformance.run("--onnx", str(path))
    skipped = {**not_applicable("Box", features=frozenset({"image"})),
               **{cid: "needs --model" for cid in NEEDS_MODEL}}
    assert_all_pass(run, skipped, status=1)  # no level without the model
    assert run.verdicts["BEH-04"] == run.verdicts["OBS-01"] == "passed"


@pytest.mark.parametrize("transform, name", [("clip", "ppo_asymmetric_relu"),
                                             ("tanh", "ppo_gsde_squash"), ("tanh", "sac"),
                                             ("tanh", "td3_large_obs")])
def test_runtime_side_transforms_conform(conformance, fixture_models, transform, name):
    run = conformance.run("--model", str(fixture_models[name]), "--action-transform", transform)
    assert_all_pass(run, expected_skips(name))


@pytest.mark.parametrize("model", ["real", "ppo_default", "ppo_asymmetric_relu"])
def test_missing_clamp_fails_parity(conformance, fixture_models, tmp_path, model):
    model_path = REAL_MODEL if model == "real" else fixture_models[model]
    run = conformance.run("--model", str(model_path), "--onnx", str(unclamped(model_path, tmp_path)))
    assert run.with_outcome("failed") == {"PAR-01", "PAR-02", "BEH-05"}, run.messages
    assert run.ret == 1
    message = run.messages["PAR-02"]
    for part in ("[PAR-02] max |final - predict| =", "obs       = [", "predict   = [",
                 "pre-clip mean = [", f"{CONFORMANCE} --model {model_path} --onnx",
                 "@reproduce_failure(", "clamp to the action bounds is missing"):
        assert part in message
    assert "Traceback" not in message


def test_discrete_tie_is_rounding_not_a_defect(conformance, tmp_path):
    """A DQN whose actions 0 and 1 have identical Q-values everywhere, exported with ties broken
    toward the last index: every disagreement with predict() is a tie, reported, not failed."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import DQN

    from fixtures.models import SpacesEnv, box

    env = SpacesEnv(box(-1.0, 1.0, (3,)), gym.spaces.Discrete(3))
    model = DQN("MlpPolicy", env, buffer_size=10, seed=0, device="cpu")
    last = model.policy.q_net.q_net[-1]
    with torch.no_grad():
        last.weight[1] = last.weight[0]
        last.bias[1] = last.bias[0] + 1.0  # action 1 wins everywhere, so action 0 never would
        last.bias[0] = last.bias[1]  # ...until the two are tied exactly
        last.bias[2] = -100.0
    model.save(tmp_path / "tied.zip")
    path = export(load_model(tmp_path / "tied.zip"), tmp_path / "tied.onnx")
    proto = onnx.load(str(path))
    argmax = next(n for n in proto.graph.node if n.op_type == "ArgMax")
    next(a for a in argmax.attribute if a.name == "select_last_index").i = 1
    onnx.save(proto, str(path))
    run = conformance.run("--model", str(tmp_path / "tied.zip"), "--onnx", str(path))
    assert run.ret == 0, run.messages
    ties = re.search(r"DISC-05: ([\d,]+) observations checked against predict\(\), ([\d,]+) "
                     r"disagreeing only at a rounding tie", run.stdout)
    assert ties and int(ties.group(2).replace(",", "")) > 0, run.stdout


@pytest.mark.parametrize("with_model", [True, False], ids=["with_model", "onnx_alone"])
def test_a_choice_batches_round_otherwise_at_a_tie_is_not_blamed(conformance, fixture_models,
                                                                 tmp_path, with_model):
    """DQN whose batches break the ties of its scores otherwise than a row alone (the
    decision search's rows at an argmax's boundary are such ties): BEH-02 passes, judged by
    predict()'s ties with a model and by the graph's own without one. A batch fault the same
    graph shape makes (wrong_at_batch_7) still fails it."""
    from .mutants import BY_NAME, CONFORMING

    base = onnx.load(str(export(load_model(fixture_models["dqn"]), tmp_path / "dqn.onnx")))
    twin = {m.name: m for m in CONFORMING}["ties_broken_by_batch"].mutate(base)
    onnx.save(twin, str(tmp_path / "twin.onnx"))
    model = ("--model", str(fixture_models["dqn"])) if with_model else ()
    run = conformance.run(*model, "--onnx", str(tmp_path / "twin.onnx"), "-k", "BEH")
    assert run.verdicts["BEH-02"] == "passed", run.messages
    onnx.save(BY_NAME["wrong_at_batch_7"].mutate(onnx.load(str(tmp_path / "dqn.onnx"))),
              str(tmp_path / "batch_7.onnx"))
    run = conformance.run(*model, "--onnx", str(tmp_path / "batch_7.onnx"), "-k", "BEH")
    assert run.verdicts["BEH-02"] == "failed", run.messages


def test_a_difference_near_float32_overflow_is_told_as_one(conformance, fixture_models,
                                                          tmp_path):
    """An artifact that overflows where predict() does not (observations rebuilt through their
    square) fails parity with the cause that fits: float32 overflow, not a missing clamp."""
    from .mutants import BY_NAME

    mutant = BY_NAME["observations_overflow_on_the_way_in"]
    model = fixture_models[mutant.model]
    base = export(load_model(model), tmp_path / "base.onnx")
    path = tmp_path / "overflowing.onnx"
    onnx.save(mutant.mutate(onnx.load(str(base))), str(path))
    run = conformance.run("--model", str(model), "--onnx", str(path), profile="mutation")
    assert run.with_outcome("failed") == {"PAR-01", "PAR-02"}, run.messages
    message = run.messages["PAR-01"]
    assert "differing rows are near float32's limits" in message
    assert "its arithmetic overflows where predict()'s does not" in message
    assert "the clamp to the action bounds is missing" not in message


def test_a_choice_won_only_in_a_small_region_is_reached(conformance, tmp_path):
    """A linear Discrete(8) policy whose action 7 wins only where 2.3 < obs[0], obs[1] < 3.1
    and obs[2] + obs[3] > 4.6 with both below 3.1 (about 1 observation in 10,000), exported
    with the argmax over the first seven logits: the each-action search reaches action 7 and
    DISC-05 fails there. An earlier search never got there, and the run passed."""
    import gymnasium as gym
    import torch
    from stable_baselines3 import PPO

    from fixtures.models import SpacesEnv, box

    env = SpacesEnv(box(-5.0, 5.0, (4,)), gym.spaces.Discrete(8))
    model = PPO("MlpPolicy", env, n_steps=16, batch_size=16, seed=0, device="cpu",
                policy_kwargs={"net_arch": {"pi": [], "vf": []}})
    weight, bias = torch.zeros(8, 4), torch.zeros(8)
    for j in range(4):  # action j wins where obs[j] > 3.1
        weight[j, j], bias[j] = 10.0, -31.0
    for j in range(2):  # action 4 + j wins where obs[j] < 2.3
        weight[4 + j, j], bias[4 + j] = -10.0, 23.0
    weight[6, 2:], bias[6] = -10.0, 46.0  # action 6 wins where obs[2] + obs[3] < 4.6
    with torch.no_grad():
        model.policy.action_net.weight.copy_(weight)
        model.policy.action_net.bias.copy_(bias)
    model.save(tmp_path / "small_region.zip")
    path = export(load_model(tmp_path / "small_region.zip"), tmp_path / "small_region.onnx")
    proto = onnx.load(str(path))
    argmax = next(n for n in proto.graph.node if n.op_type == "ArgMax")
    proto.graph.node.insert(list(proto.graph.node).index(argmax), onnx.helper.make_node(
        "Slice", [argmax.input[0], "first", "seventh", "axis"], ["first_seven_logits"]))
    argmax.input[0] = "first_seven_logits"
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(np.array([v], np.int64), name)
                                   for name, v in (("first", 0), ("seventh", 7), ("axis", 1)))
    onnx.save(proto, str(path))
    run = conformance.run("--model", str(tmp_path / "small_region.zip"), "--onnx", str(path),
                          "-k", "DISC")
    assert run.with_outcome("failed") == {"DISC-05"}, run.messages
    assert "predict() made 8 of its 8 possible choices" in run.stdout
