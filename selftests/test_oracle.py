"""The oracle's judgement of its own answers, on a real SB3 model built to put numbers exactly
where the rules draw their lines: which rows predict() cannot decide (its float32 sums can
overflow), and which artifact actions predict()'s own rounding could have given; and what the
oracle gives predict() for a model trained under VecNormalize."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from fixtures.models import FIXTURES, SpacesEnv, box
from policy_onnx.load import algorithm_class, load_model
from policy_onnx.model import (HIDDEN_LIMIT, SAFE_MAGNITUDE, SEARCH_BUDGET, ChoiceSearch,
                               Reference)
from policy_onnx.normalization import attach
from policy_onnx.strategies import REGIMES


@pytest.fixture(scope="module")
def cancelling(tmp_path_factory) -> Reference:
    """A SAC whose pre-squash mean is h1 - h2 with two identical hidden units h1 = h2 =
    max(obs[0], 0): exactly 0 everywhere, but a sum of terms as large as obs[0]."""
    model = SAC("MlpPolicy", SpacesEnv(box(-np.inf, np.inf, (2,)), box(-2.0, 2.0, (1,))),
                policy_kwargs={"net_arch": [4, 4]}, buffer_size=10, seed=0, device="cpu")
    first, _, second, _ = model.actor.latent_pi
    with torch.no_grad():
        for layer in (first, second, model.actor.mu):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, 0] = first.weight[1, 0] = 1.0
        second.weight[0, 0] = second.weight[1, 1] = 1.0
        model.actor.mu.weight[0, :2] = torch.tensor([1.0, -1.0])
    path = tmp_path_factory.mktemp("oracle") / "cancelling.zip"
    model.save(path)
    return Reference(load_model(path))


def test_a_row_is_undecidable_once_a_sum_can_reach_float32s_largest(cancelling):
    """The mean layer adds |h1| + |h2| = 2 obs[0]: decidable just below the limit, not just
    above it, and the same whether the row is alone or in a batch."""
    limit = SAFE_MAGNITUDE / 2
    rows = np.array([[0.98 * limit, 0.0], [1.02 * limit, 0.0], [1.0, 0.0], [-1e30, 0.0]],
                    dtype=np.float32)
    decided = cancelling.decidable(rows)
    assert decided.tolist() == [True, False, True, True]
    assert [bool(cancelling.decidable(r[None])[0]) for r in rows] == decided.tolist()


def test_a_hidden_layer_is_undecidable_only_once_its_own_sums_can_overflow(tmp_path):
    """A hidden unit h = max(obs[0], 0) that the output layer ignores: decidable up to half of
    float32's largest (the rounding of the bound), not past it. The output layer's margin for
    reductions after it (SAFE_MAGNITUDE) does not apply to a hidden layer."""
    model = SAC("MlpPolicy", SpacesEnv(box(-np.inf, np.inf, (2,)), box(-2.0, 2.0, (1,))),
                policy_kwargs={"net_arch": [4]}, buffer_size=10, seed=0, device="cpu")
    first, _ = model.actor.latent_pi
    with torch.no_grad():
        for layer in (first, model.actor.mu):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, 0] = 1.0
    model.save(tmp_path / "hidden.zip")
    reference = Reference(load_model(tmp_path / "hidden.zip"))
    limit = HIDDEN_LIMIT
    rows = np.array([[0.98 * limit, 0.0], [1.02 * limit, 0.0], [100 * SAFE_MAGNITUDE, 0.0]],
                    dtype=np.float32)
    assert reference.decidable(rows).tolist() == [True, False, True]


def test_a_sign_decided_by_rounding_is_a_tie_and_nothing_else_is(cancelling):
    """Where the mean's terms are huge, its sign is rounding: tanh makes either bound an
    answer predict()'s own float32 could have given. Where they are ordinary, the mean is 0
    within rounding and the action must be the middle of the bounds."""
    rows = np.array([[1e30, 0.0], [1.0, 0.0]], dtype=np.float32)
    predicted = cancelling.predict(rows)
    assert predicted.tolist() == [[0.0], [0.0]]
    low, high = np.array([[-2.0]]), np.array([[2.0]])
    for final, huge, ordinary in ((low, True, False), (high, True, False),
                                  (predicted[1:], True, True)):
        assert cancelling.within_rounding(rows[:1], final, predicted[:1]).all() == huge
        assert cancelling.within_rounding(rows[1:], final, predicted[1:]).all() == ordinary
    # A tie needs predict()'s own answer inside the interval too: the suite's copy of the
    # network must agree with it.
    assert not cancelling.within_rounding(rows[1:], predicted[1:], high).any()


@pytest.mark.parametrize("name", ["dqn_ram_vecnormalize", "ppo_int64_vecnormalize",
                                  "ppo_float16_vecnormalize"])
def test_predict_is_given_what_vecnormalize_gives_the_policy(fixture_models, name):
    """An integer (not image) or float16 Box under VecNormalize: the oracle's predict() acts on
    the float32 values SB3's own VecNormalize.normalize_obs returns for the observations as the
    environment returns them (in the space's dtype), the values the policy was trained on."""
    fixture = next(f for f in FIXTURES if f.name == name)
    path = fixture_models[name]
    space = copy.deepcopy(fixture.observation_space)
    space.seed(0)
    obs = np.stack([space.sample() for _ in range(512)])
    env = DummyVecEnv([lambda: SpacesEnv(fixture.observation_space, fixture.action_space)])
    vecnormalize = VecNormalize.load(str(path.parent / name / "vecnormalize.pkl"), env)
    model = algorithm_class(fixture.algorithm).load(path, device="cpu")
    expected, _ = model.predict(vecnormalize.normalize_obs(obs), deterministic=True)
    loaded = load_model(path)
    attach(loaded, None)
    actual = Reference(loaded).predict(obs.reshape(len(obs), -1).astype(np.float32))
    assert np.array_equal(actual, expected.reshape(len(obs), -1))


def test_the_each_action_search_stops_at_its_time_budget_and_says_so(fixture_models):
    """200 actions, most never predict()'s choice: the search took over 15 minutes. It stops
    at its budget (here a quarter of a second: one step of its ascent is more), says so, and
    the rows it returns make the choices it counts."""
    reference = Reference(load_model(fixture_models["maskable_wide"]))
    started = time.monotonic()
    rows = reference.find_each_action(budget=0.25)
    assert time.monotonic() - started < 15.0
    search = reference.choice_search
    assert search.stopped and search.possible == 200 and 0 < search.reached < 200
    assert len(np.unique(reference.predict(rows))) == search.reached


def test_the_each_action_search_finds_a_rare_action_within_its_budget(fixture_models):
    """The last of 4 actions wins in about 1 of 7,000 random observations: the ascent finds
    it, and ends before the budget."""
    reference = Reference(load_model(fixture_models["dqn_rare_action"]))
    rows = reference.find_each_action()
    assert reference.choice_search == ChoiceSearch(4, 4, False, SEARCH_BUDGET)
    assert set(reference.predict(rows)[:, 0]) == {0, 1, 2, 3}


def test_the_ascent_over_integers_reaches_an_exact_pattern():
    """The sign-gradient ascent over pixels (0..255) and over binary flags (0..1) reaches a
    pattern several elements must match exactly (an action made, or a mean past the bounds,
    at one image only): its steps below a unit still add up, so it runs every one of them
    and rounds once, at the end. (A hostile read found an ascent that stopped at half a unit
    missing such patterns: 0.5 to 0.9 off each element, and no step at all over flags.)"""
    from types import SimpleNamespace

    from policy_onnx.model import Reference
    from policy_onnx.strategies import ObservationDomain

    rng = np.random.default_rng(0)
    for size, high, chosen in ((1296, 255.0, 8), (24, 1.0, 24)):
        domain = ObservationDomain(np.zeros(size), np.full(size, high),
                                   integral=np.ones(size, bool))
        columns = torch.as_tensor(rng.permutation(size)[:chosen])
        target = torch.as_tensor(rng.integers(0, int(high) + 1, chosen), dtype=torch.float32)

        def closeness(x, owner):
            return -(x[:, columns] - target).abs().sum(dim=1)

        owner = SimpleNamespace(domain=domain, obs_dim=size)
        owner.ascent_rows = lambda count: Reference.ascent_rows(owner, count)
        rows, complete = Reference._ascend(owner, np.random.default_rng(0), closeness, 1)
        assert complete
        assert (rows[:, columns.numpy()] == target.numpy()).all(axis=1).any(), (size, high)


@pytest.mark.parametrize("name", ["ppo_default", "ppo_cnn", "ppo_discrete", "a2c_multidiscrete",
                                  "ppo_multibinary", "ppo_vecnormalize", "maskable_ppo",
                                  "sac"])
def test_one_pass_of_predict_gives_what_examine_and_predict_give(fixture_models, name):
    """examine_and_predict() hooks predict()'s own pass where the raw output is a module's
    (actor-critics): the same raw output, decidability and actions as examine() and then
    predict() on the rows it can decide; rows where predict()'s distribution rejects a NaN
    (terms of +-float32's largest) fall back to those two passes; other families take them."""
    reference = Reference(load_model(fixture_models[name]))
    rng = np.random.default_rng(0)
    rows = np.vstack([reference.domain.sample(regime, rng, 20) for regime in REGIMES[:3]])
    huge = np.where(np.arange(reference.obs_dim) % 2, -3e38, 3e38).astype(np.float32)
    for batch in (rows, np.vstack([rows, reference.domain.finish(huge[None])])):
        raw, decided, expected = reference.examine_and_predict(batch)
        raw_apart, decided_apart = reference.examine(batch)
        assert decided.tolist() == decided_apart.tolist() and decided.any()
        # the same network in float32, its convolutions run on another memory layout
        np.testing.assert_allclose(raw[decided], raw_apart[decided], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(expected[decided], reference.predict(batch[decided]),
                                   rtol=1e-5, atol=1e-6)


def test_rows_predict_rejects_fall_back_to_examine_and_predict_apart(tmp_path):
    """A PPO whose mean is h1 - h2 with h1 = h2 = relu(2 obs[0]): at obs[0] = 3e38 both are
    inf and the mean NaN, which predict()'s Normal rejects while torch validates distribution
    arguments (torch's dynamo, once imported, switches that off for the process). Its batch
    falls back to examine() and predict() of the rows that can decide: the others are
    undecidable, not an error. Without the validation, the one pass gives the same."""
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", SpacesEnv(box(-np.inf, np.inf, (2,)), box(-2.0, 2.0, (1,))),
                policy_kwargs={"net_arch": [2], "activation_fn": torch.nn.ReLU}, seed=0,
                device="cpu")
    first = model.policy.mlp_extractor.policy_net[0]
    with torch.no_grad():
        for layer in (first, model.policy.action_net):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[:, 0] = 2.0
        model.policy.action_net.weight[0] = torch.tensor([1.0, -1.0])
    model.save(tmp_path / "nan.zip")
    reference = Reference(load_model(tmp_path / "nan.zip"))
    rows = np.array([[3e38, 0.0], [1.0, 5.0]], dtype=np.float32)
    validating = torch.distributions.Distribution._validate_args
    try:
        for validate in (True, False):
            torch.distributions.Distribution.set_default_validate_args(validate)
            if validate:
                with pytest.raises(ValueError):
                    reference.predict(rows)
            raw, decided, expected = reference.examine_and_predict(rows)
            assert decided.tolist() == [False, True]
            assert expected[1].tolist() == reference.predict(rows[1:])[0].tolist() == [0.0]
    finally:
        torch.distributions.Distribution.set_default_validate_args(validating)
