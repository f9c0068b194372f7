"""Observations for the clauses: the drawing domain of a Box space, numpy samplers and hypothesis
strategies over it.

Regimes (stated in the spec, section "Observations"):
- inside: every component within the space's bounds; an unbounded side is drawn with magnitude
  log-uniform in [1e-3, MAX_MAGNITUDE];
- beyond: components past a finite bound by a distance log-uniform in [1e-3, 10] x the bound's
  width (at least 1), mixed with inside components; SB3's predict() does not clip observations
  (a bound at or past +-MAX_MAGNITUDE counts as unbounded);
- far: components of an unbounded side (infinite, or a bound at or past +-MAX_MAGNITUDE) with
  magnitudes log-uniform in [MAX_MAGNITUDE, FLOAT32_MAX] (the rest as inside): the artifact must
  not clip observations anywhere in float32's range;
- toward_clip: observations near those whose pre-clip mean the search found outside the action
  bounds (see `Reference.find_out_of_bounds`);
- each_action: observations near those where the search found predict() making each of its
  discrete choices (see `Reference.find_each_action`), so that rare actions are drawn too;
- structured (image and dict observations): images drawn as pictures (noise, a flat frame, all
  black, all white, natural pictures: flat patches, an edge, a gradient, shapes on a background,
  their stacked frames moving; the previous row's frame with one channel or one pixel changed,
  or shifted), the other entries inside;
- normalized_range, normalized_clip (models trained under VecNormalize): raw observations
  mean + z * sqrt(var + epsilon) with z across (-clip_obs, clip_obs), or with components at and
  up to three times beyond +-clip_obs, where VecNormalize clips; where it clips nothing a
  runtime can feed (clip_obs = inf), z across (-UNCLIPPED_RANGE, UNCLIPPED_RANGE).
All components are float32, and |x| <= MAX_MAGNITUDE but in the far regime. Integer elements
(pixels, integer Boxes, binary entries) are rounded into their bounds and one-hot groups hold one
1 (`ObservationDomain.finish`), whatever the regime. In the inside, beyond, far and structured
regimes a share of rows (CORNER_ROWS) has each discrete part (a one-hot group, the integers of
an entry outside images) at or next to a corner: all at its lowest, all at its highest, each
element at one of the two, or all at the lowest or the highest but one element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from hypothesis import strategies as st

MAX_MAGNITUDE = 1e4
INTEGER_LIMIT = 2.0 ** 24  # integers beyond are not all float32 numbers
# How the structured regime draws an image: noise, a flat frame, black, white, natural pictures
# (`_scene`), or the previous row's frame changed (PREVIOUS_FRAME: one channel, one pixel, or
# the whole frame shifted by a few pixels).
PIXEL_PATTERNS = ("noise", "flat", "black", "white", "patches", "edge", "gradient", "shapes",
                  "one channel", "one pixel", "shifted")
PREVIOUS_FRAME = 3  # the last patterns
SCENE_SPEED = 2  # pixels a natural picture moves from one stacked frame to the next, at most
SHIFT = 3  # pixels a shifted frame moves, at most
FLOAT32_MAX = float(np.finfo(np.float32).max)
REGIMES = ("inside", "beyond", "far", "toward_clip")
EVERYWHERE = REGIMES[:3]  # the regimes that need no search
SEEDED = ("toward_clip", "each_action")  # drawn near the rows a search found
BULK_ROWS = 320  # numpy-drawn rows added to each hypothesis example
# Memory budget of one array of drawn observations (float64 while drawn): the rows of a draw, a
# probe, a search pool or a batch follow it, so that a large observation (the limit is 2^20
# elements) gets fewer rows rather than exhausting the machine.
ROWS_BUDGET_BYTES = 64 * 2**20


def rows_for(dim: int, wanted: int) -> int:
    """`wanted` rows of `dim` elements, or fewer (at least one) to stay within the budget."""
    return max(1, min(wanted, ROWS_BUDGET_BYTES // (8 * max(dim, 1))))


# Elements of the numpy-drawn rows of one hypothesis example: a large observation (an image)
# gets fewer rows an example, so that a parity clause checks its examples in about the time
# of a vector policy's (at 84x84x4, 53 rows: over 2,000 observations a clause in the ci
# profile); observations of up to 4,687 elements keep BULK_ROWS.
EXAMPLE_ELEMENTS = 1_500_000
MIN_EXAMPLE_ROWS = 16


def example_rows(dim: int, wanted: int = BULK_ROWS) -> int:
    """The numpy rows of one example for observations of `dim` elements."""
    return rows_for(dim, min(wanted, max(MIN_EXAMPLE_ROWS, EXAMPLE_ELEMENTS // max(dim, 1))))
# The batch sizes the suite runs an artifact with: every size up to 64 (16 or 32 parallel
# environments...), and large ones, the powers of two up to 4096 with their neighbours (BEH-01
# and BEH-02 run each of them; parity draws them, see `batch_schedule`).
SMALL_BATCHES = tuple(range(1, 65))
LARGE_BATCHES = (100, 127, 128, 129, 255, 256, 257, 511, 512, 513, 1000, 1023, 1024, 1025, 2047,
                 2048, 2049, 4095, 4096, 4097)
BATCH_SIZES = SMALL_BATCHES + LARGE_BATCHES


def batch_schedule(rng: np.random.Generator, rows: int, large: int) -> tuple[int, ...]:
    """How the artifact runs an example: its `rows` rows in consecutive batches of the small
    sizes in a random order (about twenty sizes for 320 rows; the last batch takes what is
    left), then one batch of `large` rows (the example's rows again, repeated)."""
    sizes, left = [], rows
    while left > 0:
        for size in rng.permutation(SMALL_BATCHES):
            if left <= 0:
                break
            sizes.append(min(int(size), left))
            left -= sizes[-1]
    return (*sizes, large) if large else tuple(sizes)
MAX_EXPLICIT_ROWS = 4  # hypothesis-drawn rows, shrunk on failure
# Elements hypothesis draws one by one in an example: each costs it about 0.2 ms, and past
# about a thousand an example no longer fits its buffer at all. Larger observations get
# numpy-drawn rows only, with the special values hypothesis would have favoured.
MAX_EXPLICIT_ELEMENTS = 64
# Numpy-drawn rows of the float regimes: a share of them get special values in a share of their
# float elements (zeros of both signs, the bounds and the floats next to them, the largest
# magnitudes), as hypothesis's own float draws favour them.
SPECIAL_ROWS = 0.25
SPECIAL_ELEMENTS = 0.2
# The share of drawn rows whose discrete parts (Dict entries, integer Boxes) are at or next to
# a corner: all at their lowest or highest value, each at one of the two, or all but one.
CORNER_ROWS = 0.25


def explicit_rows(dim: int) -> int:
    """How many rows of `dim` elements hypothesis draws one by one in an example (at most
    MAX_EXPLICIT_ELEMENTS elements; none for a larger observation)."""
    return min(MAX_EXPLICIT_ROWS, MAX_EXPLICIT_ELEMENTS // max(dim, 1))


NORMALIZED_REGIMES = ("normalized_range", "normalized_clip")
BEYOND_CLIP = 3.0  # normalized_clip draws |z| up to this many times clip_obs
# Where VecNormalize clips no observation a runtime can feed (clip_obs = inf, SB3's way to switch
# the clip off, or a clip beyond every normalized value of the space), normalized_range draws |z|
# up to this, SB3's default clip_obs, rather than up to a clip that is never reached.
UNCLIPPED_RANGE = 10.0


@dataclass(frozen=True)
class ObservationDomain:
    low: np.ndarray  # flattened bounds, float64, may hold +-inf
    high: np.ndarray
    # VecNormalize statistics, flattened (None without): z = (x - center) / spread; the
    # normalized regimes draw |z| up to `clip`, VecNormalize's clip_obs (at most
    # UNCLIPPED_RANGE where it clips nothing a runtime can feed).
    center: np.ndarray | None = None
    spread: np.ndarray | None = None
    clip: float = 0.0
    # Bits of the observation space's floats, at most 32: a float16 space's observations are
    # float16 values (fed to the artifact as float32, the same numbers).
    float_bits: int = 32
    # Images, Dict entries and integer Boxes (observations.ObservationLayout): per element,
    # whether it is an integer (pixels, binary entries; None: none is); the (start, stop) of
    # every one-hot group; every image's (start, shape as fed, channel axis).
    integral: np.ndarray | None = None
    one_hot: tuple[tuple[int, int], ...] = ()
    images: tuple[tuple[int, tuple[int, ...], int], ...] = ()

    @classmethod
    def of_layout(cls, layout, normalization=None) -> ObservationDomain:
        low, high = layout.bounds()
        integral = layout.integral()
        # A float bound at or past the largest magnitude drawn (old gym's +-3.4e38 "unbounded"
        # velocities) is drawn like an infinite one: magnitudes log-uniform up to the largest.
        # Integers stay within their bounds, and within float32's exact integers.
        low = np.where(integral, np.maximum(low, -INTEGER_LIMIT),
                       np.where(low <= -MAX_MAGNITUDE, -np.inf, low))
        high = np.where(integral, np.minimum(high, INTEGER_LIMIT),
                        np.where(high >= MAX_MAGNITUDE, np.inf, high))
        shape = {"float_bits": layout.float_bits(),
                 "integral": integral if integral.any() else None,
                 "one_hot": layout.discrete_groups(),
                 "images": tuple((e.start, e.shape, e.channel_axis) for e in layout.images)}
        if normalization is None or not normalization.norm_obs:
            return cls(low, high, **shape)
        reach = normalization.clip_obs
        if normalization.never_clips(*cls(low, high, **shape).feedable()):
            reach = min(reach, UNCLIPPED_RANGE)
        return cls(low, high, normalization.mean, normalization.std, reach, **shape)

    @classmethod
    def unbounded(cls, dim: int) -> ObservationDomain:
        return cls(np.full(dim, -np.inf), np.full(dim, np.inf))

    @property
    def dim(self) -> int:
        return self.low.size

    @property
    def float_limit(self) -> float:
        """The largest magnitude of the space's float type (float32's at most)."""
        return FLOAT32_MAX if self.float_bits == 32 else float(np.finfo(np.float16).max)

    def feedable(self) -> tuple[np.ndarray, np.ndarray]:
        """Per element, the lowest and highest value a runtime can feed: an integer within its
        bounds (as drawn), a float anywhere in its type's range (predict() does not clip
        observations)."""
        integral = np.zeros(self.dim, dtype=bool) if self.integral is None else self.integral
        return (np.where(integral, self.low, -self.float_limit),
                np.where(integral, self.high, self.float_limit))

    @property
    def width(self) -> np.ndarray:
        finite = np.isfinite(self.low) & np.isfinite(self.high)
        return np.where(finite, np.maximum(self.high - self.low, 1.0), 1.0)

    # --- numpy sampling ---------------------------------------------------------------------------
    @cached_property
    def _float_part(self) -> tuple[np.ndarray, ObservationDomain] | None:
        """For observations with integer elements (pixels, binary entries): the float columns
        and their own domain, so that the regimes draw floats there and integers directly."""
        if self.integral is None:
            return None
        columns = np.flatnonzero(~self.integral)
        return columns, ObservationDomain(self.low[columns], self.high[columns],
                                          float_bits=self.float_bits)

    @cached_property
    def _integer_part(self) -> tuple[np.ndarray | slice, np.ndarray, np.ndarray]:
        """The integer columns (a slice when they are all of them: an image alone) and their
        bounds: scalars when every column has the same (pixels), else one per column."""
        integers = np.flatnonzero(self.integral)
        low, high = self.low[integers], self.high[integers]
        if len(integers) and (low == low[0]).all() and (high == high[0]).all():
            low, high = low[:1], high[:1]
        return (slice(None) if len(integers) == self.dim else integers), low, high

    def _integers(self, rng: np.random.Generator, n: int, at_bounds: float) -> np.ndarray:
        """[n, integer columns]: uniform integers within their bounds, a share `at_bounds` of
        them at a bound, either one as often: drawn uniform over the bounds widened on each
        side by that share, then clipped to them; in the narrowest integer type that holds
        them (an image's rows are millions of elements)."""
        integers, low, high = self._integer_part
        width = self.dim if isinstance(integers, slice) else len(integers)
        if not len(low):
            return np.empty((n, width), dtype=np.uint8)
        widening = np.round((high - low + 1) * at_bounds / (2 * (1 - at_bounds)))
        lowest, highest = low - widening, high + widening
        dtype = next(t for t in (np.uint8, np.int16, np.int32, np.int64)
                     if np.iinfo(t).min <= lowest.min() and highest.max() <= np.iinfo(t).max)
        bounds = [b.astype(dtype) for b in (lowest, highest, low, high)]
        if len(low) == 1:  # numpy's fast path takes scalar bounds only
            bounds = [b[0] for b in bounds]
        lowest, highest, low, high = bounds
        values = rng.integers(lowest, highest, (n, width), dtype=dtype, endpoint=True)
        return np.clip(values, low, high, out=values) if at_bounds else values

    def _with_integers(self, regime: str, rng: np.random.Generator, n: int,
                       at_bounds: float = 0.0) -> np.ndarray:
        """Rows whose float columns are drawn by `regime` and whose integers are uniform within
        their bounds, a share `at_bounds` of them at a bound (what "beyond" means for pixels)."""
        integers, _, _ = self._integer_part
        values = self._integers(rng, n, at_bounds)
        if isinstance(integers, slice):  # an image alone: no float column to draw
            return self.finish(values.astype(np.float32))
        columns, floats = self._float_part
        rows = np.empty((n, self.dim))
        rows[:, columns] = getattr(floats, regime)(rng, n)
        rows[:, integers] = values
        return self.finish(rows)

    def inside(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self._float_part is not None:
            return self._with_integers("inside", rng, n)
        shape = (n, self.dim)
        if np.isfinite(self.low).all() and np.isfinite(self.high).all():
            return self.finish(self.low + rng.random(shape) * (self.high - self.low))
        free = _log_uniform(rng, shape, 1e-3, MAX_MAGNITUDE) * rng.choice([-1.0, 1.0], shape)
        low = np.broadcast_to(self.low, shape)
        high = np.broadcast_to(self.high, shape)
        bounded = np.isfinite(low) & np.isfinite(high)
        uniform = np.where(bounded, low, 0.0) + rng.random(shape) * np.where(bounded, high - low, 0.0)
        rows = np.where(bounded, uniform, free)
        rows = np.where(np.isfinite(low) & ~np.isfinite(high), low + np.abs(free), rows)
        rows = np.where(~np.isfinite(low) & np.isfinite(high), high - np.abs(free), rows)
        return self.finish(rows)

    def beyond(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self._float_part is not None:
            return self._with_integers("beyond", rng, n, at_bounds=0.3)
        rows = self.inside(rng, n).astype(np.float64)
        row, column = np.nonzero(rng.random((n, self.dim)) < 0.7)  # the elements moved past
        below = rng.random(len(row)) < 0.5
        distance = _log_uniform(rng, len(row), 1e-3, 10.0) * self.width[column]
        past = np.where(below, self.low[column] - distance, self.high[column] + distance)
        # An infinite bound has no "beyond": keep the inside draw there.
        finite = np.isfinite(past)
        rows[row[finite], column[finite]] = past[finite]
        return self.finish(rows)

    def normalized(self, rng: np.random.Generator, n: int, at_clip: bool) -> np.ndarray:
        """Raw rows whose normalized components spread across (-clip, clip); with `at_clip`,
        about half of them at or beyond the clip."""
        shape = (n, self.dim)
        z = rng.uniform(-self.clip, self.clip, shape)
        if at_clip:
            edge = rng.choice([-1.0, 1.0], shape) * self.clip * rng.uniform(0.9, BEYOND_CLIP, shape)
            z = np.where(rng.random(shape) < 0.5, edge, z)
        return self.finish(self.center + z * self.spread)

    def far(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Components past either side at every magnitude float32 holds: an unbounded side
        from 1e4 out, a finite bound from ten widths out (where `beyond` stops), log-uniform up
        to float32's largest; the rest as inside."""
        if self._float_part is not None:
            return self._with_integers("far", rng, n)
        shape = (n, self.dim)
        rows = self.inside(rng, n).astype(np.float64)
        unbounded = _log_uniform(rng, shape, MAX_MAGNITUDE, FLOAT32_MAX)
        up = rng.random(shape) < 0.5
        start = np.where(up, self.high, -self.low) + 10 * self.width  # finite sides
        distance = _log_uniform(rng, shape, np.clip(start, 1e-3, FLOAT32_MAX), FLOAT32_MAX)
        bounded = np.where(up, distance, -distance)
        far = np.where(up, np.where(np.isposinf(self.high), unbounded, bounded),
                       np.where(np.isneginf(self.low), -unbounded, bounded))
        return self.finish(np.where(rng.random(shape) < 0.5, far, rows))

    def structured(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Inside rows whose images are drawn as pictures (PIXEL_PATTERNS)."""
        rows = self.inside(rng, n).astype(np.float64)
        for start, shape, channel_axis in self.images:
            stop = start + math.prod(shape)
            frames = rows[:, start:stop].reshape(n, *shape)
            for i in range(n):
                patterns = PIXEL_PATTERNS if i else PIXEL_PATTERNS[:-PREVIOUS_FRAME]
                # [channels, height, width]: a view of the frame, channels first
                _draw_frame(rng, rng.choice(patterns), np.moveaxis(frames[i], channel_axis, 0),
                            np.moveaxis(frames[i - 1], channel_axis, 0))
            rows[:, start:stop] = frames.reshape(n, -1)
        return self.finish(rows)

    def sample(self, regime: str, rng: np.random.Generator, n: int,
               seeds: np.ndarray | None = None) -> np.ndarray:
        if regime == "structured":
            return self._corners(self.structured(rng, n), rng)
        if regime == "far":
            return self._corners(self._special(self.far(rng, n), rng, regime), rng)
        if regime in NORMALIZED_REGIMES:
            return self.normalized(rng, n, at_clip=regime == "normalized_clip")
        if regime in SEEDED and seeds is not None and len(seeds):
            picks = seeds[rng.integers(0, len(seeds), n)]
            jitter = rng.normal(0.0, 1.0, picks.shape) * 10.0 ** rng.uniform(-4, -1, (n, 1))
            rows = picks * (1.0 + jitter)
            # up to half the rows are the found rows themselves: a choice won only in a small
            # region may have been found at its edge, where every jittered copy falls outside
            exact = rng.permutation(len(seeds))[:n // 2]
            rows[:len(exact)] = seeds[exact]
            return self.finish(rows)
        rows = self.inside(rng, n) if regime == "inside" else self.beyond(rng, n)
        return self._corners(self._special(rows, rng, regime), rng)

    @cached_property
    def _discrete_parts(self) -> tuple[tuple[bool, int, int], ...]:
        """(one-hot?, start, stop) of each discrete part of a row: every one-hot group, and
        every run of integer elements outside images (binary entries, integer Boxes)."""
        parts = [(True, start, stop) for start, stop in self.one_hot]
        if self.integral is not None:
            integral = self.integral.astype(np.int8)
            for start, shape, _ in self.images:
                integral[start:start + math.prod(shape)] = 0
            edges = np.flatnonzero(np.diff(np.concatenate([[0], integral, [0]])))
            parts += [(False, int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
        return tuple(parts)

    def _corners(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A share of `rows` (CORNER_ROWS) with each discrete part at or next to a corner,
        each part its own way: every element at its lowest value (a one-hot group's first
        choice), every one at its highest (the last choice), each at one of the two, or all at
        the lowest or the highest but one element (the second or the last but one choice)."""
        chosen = np.flatnonzero(rng.random(len(rows)) < CORNER_ROWS)
        if not self._discrete_parts or not len(chosen):
            return rows
        rows = rows.astype(np.float64)
        n = len(chosen)
        for one_hot, start, stop in self._discrete_parts:
            # 0 lowest, 1 highest, 2 each at one of the two, 3 and 4 as 0 and 1 but one element
            way = rng.integers(0, 5, n)
            high = np.where(way[:, None] == 2, rng.random((n, stop - start)) < 0.5,
                            (way % 2 == 1)[:, None])
            but_one = np.arange(stop - start) == rng.integers(0, stop - start, n)[:, None]
            high ^= (way >= 3)[:, None] & but_one
            if one_hot:
                last = np.where(way == 2, high[:, 0], way % 2 == 1)
                position = np.where(last, stop - start - 1, 0)
                position = np.where(way >= 3, np.where(last, stop - start - 2, 1), position)
                rows[chosen, start:stop] = 0.0
                rows[chosen, start + np.clip(position, 0, stop - start - 1)] = 1.0
            else:
                rows[chosen, start:stop] = np.where(high, self.high[start:stop],
                                                    self.low[start:stop])
        return self.finish(rows)

    def special_values(self, regime: str) -> np.ndarray:
        """[candidates, dim]: the special values of each element in `regime` (NaN where one does
        not apply): 0 and -0.0, +-1, the float32 bounds and the floats just inside them; beyond,
        the floats just outside the finite bounds; far, +-float32's largest."""
        low = np.where(np.isfinite(self.low), self.low, -MAX_MAGNITUDE).astype(np.float32)
        high = np.where(np.isfinite(self.high), self.high, MAX_MAGNITUDE).astype(np.float32)
        inward = [low, high, np.nextafter(low, high), np.nextafter(high, low)]
        values = [np.full(self.dim, v, np.float32) for v in (0.0, -0.0, 1.0, -1.0)] + inward
        inside = [np.where((v >= low) & (v <= high), v, np.nan) for v in values]
        if regime == "beyond":
            outward = [np.nextafter(low, np.float32(-np.inf)), np.nextafter(high, np.float32(np.inf))]
            inside += [np.where(np.isfinite(b), v, np.nan)
                       for b, v in zip((self.low, self.high), outward)]
        if regime == "far":
            inside += [np.full(self.dim, -FLOAT32_MAX), np.full(self.dim, FLOAT32_MAX)]
        return np.array(inside, dtype=np.float64)

    def _special(self, rows: np.ndarray, rng: np.random.Generator, regime: str) -> np.ndarray:
        """A share of `rows` (SPECIAL_ROWS) with a share of their float elements
        (SPECIAL_ELEMENTS) set to one of their special values."""
        if self.integral is not None and self.integral.all():
            return rows
        picked = np.flatnonzero(rng.random(len(rows)) < SPECIAL_ROWS)
        row, column = np.nonzero(rng.random((len(picked), self.dim)) < SPECIAL_ELEMENTS)
        candidates = self.special_values(regime)
        values = candidates[rng.integers(0, len(candidates), len(row)), column]
        keep = ~np.isnan(values)
        if self.integral is not None:
            keep &= ~self.integral[column]
        if not keep.any():
            return rows
        rows = rows.astype(np.float64)
        rows[picked[row[keep]], column[keep]] = values[keep]
        return self.finish(rows)

    def probe(self, seed: int = 0, n: int = 1000, extra: np.ndarray | None = None
              ) -> np.ndarray:
        """A fixed mix of regimes and corner values for the behaviour clauses (fewer rows for a
        large observation); `extra` rows come right after the corners, those within the
        probe's reach (+-MAX_MAGNITUDE: beyond it a network's own float32 sums may overflow,
        which the behaviour clauses, judged without the model, cannot tell)."""
        rng = np.random.default_rng(seed)
        n = max(rows_for(self.dim, n), 7)
        corners = [np.zeros(self.dim), np.clip(self.low, -MAX_MAGNITUDE, None),
                   np.clip(self.high, None, MAX_MAGNITUDE), np.full(self.dim, MAX_MAGNITUDE),
                   np.full(self.dim, -MAX_MAGNITUDE)]
        half = (n - len(corners)) // 2
        extra = np.empty((0, self.dim)) if extra is None else \
            extra[np.abs(extra).max(axis=1) <= MAX_MAGNITUDE][:rows_for(self.dim, n)]
        return np.vstack([self.finish(np.array(corners)), self.finish(extra),
                          self.inside(rng, half), self.beyond(rng, n - len(corners) - half)])

    @property
    def regimes(self) -> tuple[str, ...]:
        """The regimes that need no search, for this domain: the float regimes, pictures for
        images, and the normalized ones under VecNormalize statistics."""
        return (*EVERYWHERE, *(("structured",) if self.images else ()),
                *(NORMALIZED_REGIMES if self.center is not None else ()))

    # --- hypothesis -------------------------------------------------------------------------------
    def finish(self, rows: np.ndarray) -> np.ndarray:
        """Rows as the runtime feeds them: finite values of the space's float type, as
        float32."""
        if self.float_bits < 32:
            rows = np.clip(rows, -self.float_limit, self.float_limit).astype(np.float16)
            rows = rows.astype(np.float32)
        else:  # clipped into a float32 copy in one pass (an image's rows are large)
            rows = np.clip(rows, -self.float_limit, self.float_limit,
                           out=np.empty(np.shape(rows), np.float32))
        if self.integral is not None:
            integers, low, high = self._integer_part
            values = rows[:, integers]  # a view for an image alone, else a copy
            np.round(values, out=values)
            np.clip(values, low.astype(np.float32), high.astype(np.float32), out=values)
            if not isinstance(integers, slice):
                rows[:, integers] = values
        for start, stop in self.one_hot:
            hot = np.argmax(rows[:, start:stop], axis=1)
            rows[:, start:stop] = 0.0
            rows[np.arange(len(rows)), start + hot] = 1.0
        return rows

    def _floats(self, low: float, high: float, limit: float = MAX_MAGNITUDE
                ) -> st.SearchStrategy[float]:
        """Floats of the space's width in [low, high] within +-limit (a range entirely past it
        collapses to the nearest end)."""
        as_width = np.float16 if self.float_bits < 32 else np.float32
        limit = min(limit, float(np.finfo(as_width).max))
        low = float(as_width(np.clip(low, -limit, limit)))
        high = float(as_width(np.clip(high, -limit, limit)))
        return st.floats(low, high, width=self.float_bits, allow_nan=False, allow_infinity=False)

    def element(self, i: int, regime: str) -> st.SearchStrategy[float]:
        if regime in NORMALIZED_REGIMES:
            center, spread, clip = self.center[i], self.spread[i], self.clip
            if regime == "normalized_range":
                return self._floats(center - clip * spread, center + clip * spread)
            return st.one_of(self._floats(center + 0.9 * clip * spread,
                                     center + BEYOND_CLIP * clip * spread),
                             self._floats(center - BEYOND_CLIP * clip * spread,
                                     center - 0.9 * clip * spread))
        low, high = self.low[i], self.high[i]
        inside = self._floats(low, high)
        if regime == "far":  # past either side, from 1e4 or ten widths out, to float32's largest
            reach = 10.0 * self.width[i]
            near_low = -MAX_MAGNITUDE if np.isneginf(low) else low - reach
            near_high = MAX_MAGNITUDE if np.isposinf(high) else high + reach
            return st.one_of([inside,
                              self._floats(-FLOAT32_MAX, near_low, FLOAT32_MAX),
                              self._floats(near_high, FLOAT32_MAX, FLOAT32_MAX)])
        if regime != "beyond":
            return inside
        reach = 10.0 * self.width[i]
        parts = [inside]
        # A bound at or past the largest magnitude drawn has no "beyond" within reach.
        if -MAX_MAGNITUDE < low:
            parts.append(self._floats(low - reach, low))
        if high < MAX_MAGNITUDE:
            parts.append(self._floats(high, high + reach))
        return st.one_of(parts)

    def rows(self, regime: str) -> st.SearchStrategy[list[list[float]]]:
        """Rows drawn element by element by hypothesis (`explicit_rows`: none for an
        observation of more than MAX_EXPLICIT_ELEMENTS)."""
        count = explicit_rows(self.dim)
        if not count:
            return st.just([])
        row = st.tuples(*(self.element(i, regime) for i in range(self.dim)))
        return st.lists(row, min_size=1, max_size=count)


# How a row's action mask is drawn (the rows of an example take them in turn): allowed or not
# at random with the example's density, all allowed, all masked, one choice allowed or all but
# one (each choice in turn, over the rows of an example), two to four choices allowed, a block
# of consecutive choices allowed (from the first in half of them), all but predict()'s own
# choice with every action allowed. Per group: each element of a MultiDiscrete action.
MASK_PATTERNS = ("coin flips", "all allowed", "all masked", "one allowed", "all but one",
                 "a few allowed", "a block allowed", "all but predict's choice")
MASK_DENSITIES = (0.0, 0.1, 0.5, 0.9, 1.0)


@dataclass(frozen=True)
class MaskSpace:
    """The action masks of a masked policy: the sizes of its groups (n for Discrete, each of
    nvec for MultiDiscrete; a mask is their concatenation) and, for the masks that exclude it,
    predict()'s choice with every action allowed (flat rows -> [rows, groups] integers)."""
    groups: tuple[int, ...]
    unmasked_choice: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def width(self) -> int:
        return sum(self.groups)

    def draw(self, rng: np.random.Generator, observations: np.ndarray,
             density: float) -> np.ndarray:
        """bool [rows, width]: a mask for each row of `observations`, by MASK_PATTERNS in turn
        (the last only with `unmasked_choice`)."""
        n = len(observations)
        count = len(MASK_PATTERNS) - (self.unmasked_choice is None)
        pattern = np.asarray(MASK_PATTERNS)[(rng.integers(count) + np.arange(n)) % count]
        masks = rng.random((n, self.width)) < density
        masks[pattern == "all allowed"] = True
        masks[pattern == "all masked"] = False
        one = pattern == "one allowed"
        excluded = pattern == "all but predict's choice"
        all_but = excluded | (pattern == "all but one")
        positions = rng.integers(0, max(self.groups)) + np.arange(n) // count  # in turn
        chosen = self.unmasked_choice(observations[excluded]) if excluded.any() else None
        start = 0
        for j, size in enumerate(self.groups):
            position = positions % size
            if chosen is not None:
                position[excluded] = chosen[:, j]
            only = np.arange(size) == position[:, None]
            group = masks[:, start:start + size]
            group[one] = only[one]
            group[all_but] = ~only[all_but]
            few = pattern == "a few allowed"
            group[few] = np.argsort(rng.random((int(few.sum()), size)), axis=1) < \
                rng.integers(2, 5, (int(few.sum()), 1))
            block = pattern == "a block allowed"
            first = np.where(rng.random(n) < 0.5, 0, rng.integers(0, size, n))
            last = first + rng.integers(1, size + 1, n)  # past the end: up to the last choice
            inside = (np.arange(size) >= first[:, None]) & (np.arange(size) < last[:, None])
            group[block] = inside[block]
            start += size
        return masks


@dataclass(frozen=True)
class Batch:
    """One hypothesis example: a few shrinkable rows, then numpy rows from a drawn seed."""
    regime: str
    seed: int
    observations: np.ndarray  # float32 [n, obs_dim]
    masks: np.ndarray | None = None  # bool [n, MaskSpace.width], for masked policies
    large_batch: int = 0  # the rows are also run as one batch of this many (repeated)

    def schedule(self, rows: int) -> tuple[int, ...]:
        """The batches the artifact runs `rows` of this example's rows in (`batch_schedule`,
        from the example's seed)."""
        return batch_schedule(np.random.default_rng(self.seed), rows, self.large_batch)

    def __repr__(self) -> str:
        return (f"Batch(regime={self.regime!r}, seed={self.seed}, rows={len(self.observations)}, "
                f"large_batch={self.large_batch})")


def batches(domain: ObservationDomain, regimes=REGIMES, seeds: np.ndarray | None = None,
            bulk_rows: int = BULK_ROWS, mask_space: MaskSpace | None = None
            ) -> st.SearchStrategy[Batch]:
    """Batches of observations; with `mask_space`, each row also gets an action mask
    (`MaskSpace.draw`; the first row's drawn by hypothesis)."""
    rows = example_rows(domain.dim, bulk_rows)

    @st.composite
    def draw_batch(draw) -> Batch:
        regime = draw(st.sampled_from(regimes))
        explicit_regime = "inside" if regime in SEEDED else regime
        explicit = np.asarray(draw(domain.rows(explicit_regime)),
                              dtype=np.float64).reshape(-1, domain.dim)
        if regime in SEEDED and seeds is not None and len(seeds):
            index = draw(st.integers(0, len(seeds) - 1))
            explicit = np.vstack([seeds[index:index + 1], explicit])
        large = draw(st.sampled_from(LARGE_BATCHES))
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        sampled = domain.sample(regime, rng, rows, seeds)
        observations = domain.finish(np.vstack([explicit, sampled]) if len(explicit)
                                     else sampled)
        masks = None
        if mask_space is not None:
            masks = mask_space.draw(rng, observations, draw(st.sampled_from(MASK_DENSITIES)))
            masks[0] = draw(st.lists(st.booleans(), min_size=mask_space.width,
                                     max_size=mask_space.width))
        # A large observation's large batch follows the example's element budget (BEH-02 runs
        # every size on the probe); a budget that holds no batch larger than the small sizes
        # (a frame stack's) runs none: the rows would only run again in a batch of those sizes.
        large = min(large, max(len(observations), EXAMPLE_ELEMENTS // domain.dim))
        if large <= SMALL_BATCHES[-1]:
            large = 0
        return Batch(regime, seed, observations, masks, large)

    return draw_batch()


def _draw_frame(rng: np.random.Generator, pattern: str, frame: np.ndarray,
                previous: np.ndarray) -> None:
    """Draw one image [channels, height, width] in place by `pattern` (PIXEL_PATTERNS), pixel
    values 0..255 (integers but for a gradient's, which `finish` rounds); `previous` is the
    previous row's frame."""
    channels, height, width = frame.shape
    if pattern == "flat":
        frame[...] = rng.integers(0, 256)
    elif pattern == "black":
        frame[...] = 0
    elif pattern == "white":
        frame[...] = 255
    elif pattern in ("patches", "edge", "gradient", "shapes"):
        frame[...] = _scene(rng, pattern, channels, height, width)
    elif pattern == "one channel":
        frame[...] = previous
        frame[rng.integers(channels)] = rng.integers(0, 256)
    elif pattern == "one pixel":
        frame[...] = previous
        frame[:, rng.integers(height), rng.integers(width)] = rng.integers(0, 256, channels)
    elif pattern == "shifted":  # the edge rows and columns repeated where the frame left them
        dy, dx = rng.integers(-SHIFT, SHIFT + 1, 2)
        ys = np.clip(np.arange(height) - dy, 0, height - 1)
        xs = np.clip(np.arange(width) - dx, 0, width - 1)
        frame[...] = previous[:, ys[:, None], xs]
    # "noise": the inside draw, uniform pixels, stays


def _scene(rng: np.random.Generator, pattern: str, channels: int, height: int,
           width: int) -> np.ndarray:
    """A natural picture [channels, height, width] of grey levels drawn 0..255: a few flat
    patches, an edge (two levels either side of a line), a gradient (a linear ramp between two
    levels) or shapes (rectangles and discs of one level on a background of another). Its
    channels are consecutive frames of the same scene moving by up to SCENE_SPEED pixels a
    frame (a frame stack; standing still in a quarter of the pictures)."""
    speed = rng.integers(-SCENE_SPEED, SCENE_SPEED + 1, 2) * (rng.random() < 0.75)
    margin = SCENE_SPEED * (channels - 1)
    size_y, size_x = height + 2 * margin, width + 2 * margin
    y, x = np.ogrid[:size_y, :size_x]
    levels = rng.integers(0, 256, 4).astype(np.float64)
    if pattern == "patches":  # a grid of random cuts, each cell one of 2 to 4 levels
        cut_y = np.sort(rng.integers(0, size_y, rng.integers(1, 4)))
        cut_x = np.sort(rng.integers(0, size_x, rng.integers(1, 4)))
        cells = np.searchsorted(cut_y, y, "right") * (len(cut_x) + 1) + \
            np.searchsorted(cut_x, x, "right")
        picture = levels[rng.integers(0, rng.integers(2, 5), cells.max() + 1)][cells]
    elif pattern in ("edge", "gradient"):  # along a direction, from a point in the frame
        angle = rng.uniform(0.0, 2 * np.pi)
        along = (x - rng.integers(margin, margin + width)) * np.cos(angle) + \
            (y - rng.integers(margin, margin + height)) * np.sin(angle)
        if pattern == "edge":
            picture = np.where(along > 0, levels[0], levels[1])
        else:
            ramp = np.clip(along / rng.uniform(2.0, max(3, height, width)) + 0.5, 0.0, 1.0)
            picture = levels[0] + (levels[1] - levels[0]) * ramp
    else:  # shapes
        picture = np.full((size_y, size_x), levels[0])
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size_y), rng.integers(0, size_x)
            ry, rx = rng.integers(2, max(3, height // 3)), rng.integers(2, max(3, width // 3))
            inside = (np.abs(y - cy) <= ry) & (np.abs(x - cx) <= rx) if rng.random() < 0.5 \
                else (y - cy) ** 2 + (x - cx) ** 2 <= ry ** 2
            level = levels[rng.integers(1, 4) if rng.random() < 0.3 else 1]
            picture = np.where(inside, level, picture)
    starts = margin + np.arange(channels)[:, None] * speed
    return np.stack([picture[sy:sy + height, sx:sx + width] for sy, sx in starts])


def _log_uniform(rng: np.random.Generator, shape, low, high) -> np.ndarray:
    # exp, not 10 ** x: numpy's power is several times slower on large observations
    return np.exp(rng.uniform(np.log(low), np.log(high), shape))


