"""The suite's own observation strategies, without a model: at every observation size a user can
bring (1 to 30,000 elements, past the size where rows stop being drawn element by element),
every regime draws its batches under the settings the clauses search with, and no hypothesis
health check ends the search; the normalized regimes draw where VecNormalize clips nothing. A
limitation of the strategies must show here, not as a failing clause in a user's run."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings

from policy_onnx.normalization import Normalization
from policy_onnx.observations import ObservationLayout
from policy_onnx.parity import search_settings
from policy_onnx.strategies import (BEYOND_CLIP, MAX_EXPLICIT_ELEMENTS, NORMALIZED_REGIMES,
                                    REGIMES, UNCLIPPED_RANGE, MaskSpace, ObservationDomain,
                                    batches, example_rows)

# Around every threshold of the strategies: hypothesis's own limits on an example's size (a
# Humanoid's 376 elements failed its large_base_example check), the element-by-element limit,
# the per-example element budget, an 84x84x4 frame stack, and the largest sizes people bring.
SIZES = (1, 2, 3, 7, 17, 64, 111, 255, 256, 300, 360, 375, 376, 377, 512, 700, 1000,
         MAX_EXPLICIT_ELEMENTS - 1, MAX_EXPLICIT_ELEMENTS, MAX_EXPLICIT_ELEMENTS + 1, 2048, 4687,
         4688, 10_000, 28_224, 30_000)
EXAMPLES = 4  # health checks judge the first examples (and the smallest); the ci profile runs 40


def _domains(size: int) -> dict[str, tuple[ObservationDomain, tuple[str, ...]]]:
    """Every kind of observation the strategies draw, with the regimes that apply to it."""
    unbounded = ObservationDomain.unbounded(size)
    bounded = ObservationDomain(np.full(size, -1.0), np.full(size, 1.0))
    normalized = ObservationDomain(np.full(size, -np.inf), np.full(size, np.inf),
                                   center=np.linspace(-3.0, 3.0, size),
                                   spread=np.linspace(0.1, 10.0, size), clip=5.0)
    pixels = ObservationDomain(np.zeros(size), np.full(size, 255.0),
                               integral=np.ones(size, dtype=bool), images=((0, (size, 1, 1), 2),))
    groups = tuple((i, min(i + 3, size)) for i in range(0, size // 2, 3))
    mixed = ObservationDomain(np.where(np.arange(size) < size // 2, 0.0, -5.0),
                              np.where(np.arange(size) < size // 2, 1.0, 5.0),
                              integral=np.arange(size) < size // 2, one_hot=groups)
    half = ObservationDomain(np.full(size, -50.0), np.full(size, 50.0), float_bits=16)
    seeded = (*REGIMES, "each_action")
    return {"unbounded": (unbounded, seeded), "bounded": (bounded, seeded),
            "normalized": (normalized, ("normalized_range", "normalized_clip")),
            "pixels": (pixels, ("structured", *seeded)), "mixed": (mixed, seeded),
            "float16": (half, seeded)}


@pytest.mark.parametrize("size", [pytest.param(size, marks=pytest.mark.slow) if size > 10_000
                                  else size for size in SIZES])  # the largest: make test-slow
def test_every_strategy_draws_at_every_size(size):
    """Each regime on its own: a clause that draws from one regime alone (NORM-02 draws at the
    normalization clip only) meets that regime's smallest example."""
    for name, (domain, regimes) in _domains(size).items():
        seeds = domain.inside(np.random.default_rng(0), 3)
        for regime in regimes:
            drawn = []

            @settings(search_settings(), max_examples=EXAMPLES if size <= 4096 else 2,
                      derandomize=True, database=None,
                      deadline=None)
            @given(batch=batches(domain, (regime,), seeds, mask_space=MaskSpace((2, 3))))
            def draws(batch):
                rows = batch.observations
                assert rows.dtype == np.float32 and rows.shape[1] == size
                assert len(rows) >= example_rows(size) and np.isfinite(rows).all()
                assert batch.masks.shape == (len(rows), 5)
                drawn.append(batch.regime)

            draws()  # a health check or an error of a strategy raises here
            assert drawn == [regime] * len(drawn) and drawn, (name, regime)


def _stack_domain(height: int = 84, width: int = 84, channels: int = 4) -> ObservationDomain:
    """An image alone, channel-last (a frame stack as Atari environments return it)."""
    size = height * width * channels
    return ObservationDomain(np.zeros(size), np.full(size, 255.0), integral=np.ones(size, bool),
                             images=((0, (height, width, channels), 2),))


def _moves(before: np.ndarray, after: np.ndarray, reach: int = 3) -> bool:
    """Is `after` ([height, width]) `before` moved by a few pixels, and not the same?"""
    inner = (slice(reach, -reach),) * 2
    return not (before[inner] == after[inner]).all() and any(
        (np.roll(before, (dy, dx), axis=(0, 1))[inner] == after[inner]).all()
        for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1))


def _smooth(frame: np.ndarray) -> bool:
    """Many grey levels ([height, width]), neighbours close: a ramp, not noise."""
    steps = max(np.abs(np.diff(frame, axis=axis)).max() for axis in (0, 1))
    return len(np.unique(frame)) >= 16 and steps <= 16


def test_structured_images_are_natural_pictures_and_stacks_move():
    """Frames made of flat patches of two grey levels (every frame of the stack showing both),
    ramps, stacks whose frames move from one channel to the next, and rows that are the
    previous row's frame shifted: all drawn, as integers 0..255."""
    rows = _stack_domain().structured(np.random.default_rng(0), 300)
    assert rows.dtype == np.float32 and rows.min() >= 0 and rows.max() <= 255
    assert (rows == np.round(rows)).all()
    frames = rows.reshape(-1, 84, 84, 4).transpose(0, 3, 1, 2)  # [row, channel, y, x]
    two_levels = sum(len(np.unique(frame)) == 2 and all(len(np.unique(c)) == 2 for c in frame)
                     for frame in frames)
    ramps = sum(_smooth(frame[0]) for frame in frames)
    moving = sum(_moves(frame[0], frame[1]) and _moves(frame[1], frame[2]) for frame in frames)
    shifted = sum(_moves(before[0], after[0]) for before, after in zip(frames, frames[1:]))
    assert min(two_levels, ramps, moving, shifted) >= 5, (two_levels, ramps, moving, shifted)


def test_masks_force_each_choice_in_turn_and_exclude_predicts_own():
    """Masks allowing one choice (each of 200 in turn), all but one, all but predict()'s
    own choice, all, none; per element of a MultiDiscrete action."""
    rng = np.random.default_rng(0)
    observations = np.zeros((320, 4))
    wide = MaskSpace((200,), lambda obs: np.full((len(obs), 1), 7))
    masks = np.vstack([wide.draw(rng, observations, density) for density in (0.1, 0.9) * 20])
    allowed = masks.sum(axis=1)
    assert set(np.argmax(masks[allowed == 1], axis=1)) == set(range(200))
    assert set(np.argmin(masks[allowed == 199], axis=1)) == set(range(200))
    assert (~masks[allowed == 199, 7]).sum() >= 1000  # predict()'s choice excluded
    assert (allowed == 200).any() and (allowed == 0).any()
    groups = MaskSpace((3, 4)).draw(rng, observations, 0.5)
    one_each = (groups[:, :3].sum(axis=1) == 1) & (groups[:, 3:].sum(axis=1) == 1)
    assert set(np.argmax(groups[one_each, 3:], axis=1)) == set(range(4))


def _normalization(mean, var, clip_obs) -> Normalization:
    return Normalization(path=Path("vecnormalize.pkl"), sha256="", norm_obs=True,
                         mean=np.asarray(mean, np.float64), var=np.asarray(var, np.float64),
                         epsilon=1e-8, clip_obs=clip_obs)


@pytest.mark.parametrize("space, clip_obs, never, drawn", [
    (gym.spaces.Box(-np.inf, np.inf, (2,)), np.inf, "clip_obs is inf", UNCLIPPED_RANGE),
    (gym.spaces.Box(-np.inf, np.inf, (2,)), 1e300, "no observation of this space reaches",
     UNCLIPPED_RANGE),
    (gym.spaces.Box(-np.inf, np.inf, (2,)), 5.0, "", 5.0),
    # Bytes of mean 128 and std 40 stay within (255 - 128) / 40 = 3.2 of it.
    (gym.spaces.Box(0, 255, (2,), np.uint8), 5.0, "no observation of this space reaches", 5.0),
    (gym.spaces.Box(0, 255, (2,), np.uint8), 3.0, "", 3.0)])
def test_the_normalized_range_where_vecnormalize_clips_nothing(space, clip_obs, never, drawn):
    """Where VecNormalize clips no observation a runtime can feed (clip_obs = inf, a clip past
    every float32 observation's normalized value, or past the bounds of an integer Box), NORM-02
    has nothing to draw and NORM-01 draws within a finite range; both regimes draw."""
    normalization = _normalization([128.0, 128.0], [1600.0, 1600.0], clip_obs)
    domain = ObservationDomain.of_layout(ObservationLayout(space), normalization)
    reason = normalization.never_clips(*domain.feedable())
    assert (never in reason) if never else reason == ""
    assert domain.clip == drawn
    for regime in NORMALIZED_REGIMES:
        rows = domain.sample(regime, np.random.default_rng(0), 64)
        assert np.isfinite(rows).all()
        z = (rows - 128.0) / np.sqrt(1600.0 + 1e-8)
        assert (np.abs(z) < drawn * BEYOND_CLIP + 1).all()


@pytest.mark.parametrize("low, high", [(0, 255), (0, 1), (-5, 300), (-(2 ** 24), 2 ** 24)])
def test_integers_are_uniform_within_their_bounds_and_beyond_puts_a_share_at_them(low, high):
    """Integer elements (pixels, binary entries, integer Boxes) are drawn as integers within
    their bounds, every value reachable (each bound too, inside); beyond puts about 30% of them
    at a bound, either one as often. Per-column bounds, as in a mixed observation, too."""
    size = 4000
    rng = np.random.default_rng(0)
    same = ObservationDomain(np.full(size, float(low)), np.full(size, float(high)),
                             integral=np.ones(size, bool))
    per_column = ObservationDomain(np.r_[np.full(size, float(low)), [0.0]],
                                   np.r_[np.full(size, float(high)), [3.0]],
                                   integral=np.ones(size + 1, bool))
    for domain in (same, per_column):
        inside, beyond = domain.inside(rng, 50)[:, :size], domain.beyond(rng, 50)[:, :size]
        for rows in (inside, beyond):
            assert rows.dtype == np.float32 and (rows == np.round(rows)).all()
            assert rows.min() >= low and rows.max() <= high
        if high - low <= 255:
            assert set(np.unique(inside)) == set(range(low, high + 1))
        at_bounds = (beyond == low) | (beyond == high)
        expected = max(0.3, 2 / (high - low + 1))
        assert abs(at_bounds.mean() - expected) < 0.03 + (high - low <= 2) * 0.5
        if high - low > 2:
            assert abs((beyond == low).mean() - (beyond == high).mean()) < 0.02


def test_a_frame_stack_example_runs_its_rows_once_a_vector_one_again_in_a_large_batch():
    """The large batch repeats an example's rows up to a drawn size within its element budget:
    a frame stack's budget holds its 53 rows alone, which its schedule of sizes 1 to 64 runs
    already, so it runs none; a vector observation's runs 100 to 4097 rows."""
    for domain, wanted in ((_stack_domain(), {0}), (ObservationDomain.unbounded(17), None)):
        larges = []

        @settings(search_settings(), max_examples=12, derandomize=True, database=None,
                  deadline=None)
        @given(batch=batches(domain, ("inside",)))
        def draws(batch):
            larges.append(batch.large_batch)
            schedule = batch.schedule(len(batch.observations))
            assert sum(schedule) == len(batch.observations) + batch.large_batch

        draws()
        assert set(larges) == wanted if wanted else min(larges) >= 100
