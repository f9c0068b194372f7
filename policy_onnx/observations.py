"""The observation a runtime feeds: the input contract for vectors, images and dicts.

One rule for every observation space: `obs` is `gymnasium.spaces.flatten(space, observation)`
as float32, where `space` is the observation space as the environment returns it. For a vector
Box that is the observation flattened in C order (today's contract); an image (SB3's
definition: a uint8 Box of rank 3 with bounds 0 and 255) is its raw pixel values in the
environment's layout, usually height-width-channel (SB3 saves it channel-first, transposed by
VecTransposeImage); a Dict is its entries in the space's key order, Discrete entries one-hot,
MultiDiscrete entries concatenated one-hots, MultiBinary entries as they are. The artifact does
the rest of SB3's preprocessing itself: the transpose, /255 when the policy normalizes images,
the split back into the entries its extractor takes.

`ObservationLayout` knows where every entry lies in a flat row: it turns flat rows into what
`predict()` takes, into what the policy's extractor takes (heads.Preprocessor, the torch module
the export bakes in), and describes the space for the `observation_space` metadata entry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CHANNELS_LAST, CHANNELS_FIRST = "HWC", "CHW"
IMAGE_LAYOUTS = (CHANNELS_LAST, CHANNELS_FIRST)


def is_image(space) -> bool:
    """SB3's `is_image_space` (channels in any position): a uint8 Box of rank 3, bounds 0..255."""
    return (type(space).__name__ == "Box" and len(space.shape) == 3
            and np.dtype(space.dtype) == np.uint8 and bool(np.all(space.low == 0))
            and bool(np.all(space.high == 255)))


@dataclass(frozen=True)
class Entry:
    """One entry of the observation (the whole observation for a space that is not a Dict)."""
    key: str | None  # the Dict key; None for a plain space
    space: object  # the model's (sub-)space, as SB3 saved it
    start: int  # where the entry begins in a flat row
    size: int  # its flat size (one-hot sizes for Discrete and MultiDiscrete)
    image: bool = False
    layout: str | None = None  # images: the layout the runtime feeds, HWC or CHW

    @property
    def kind(self) -> str:
        return type(self.space).__name__

    @property
    def stop(self) -> int:
        return self.start + self.size

    @property
    def shape(self) -> tuple[int, ...]:
        """The entry's shape as the runtime feeds it (an image in its declared layout)."""
        shape = tuple(int(d) for d in self.space.shape)
        if self.image and self.layout == CHANNELS_LAST:
            channels, height, width = shape
            return height, width, channels
        return shape

    @property
    def channel_axis(self) -> int:
        return 2 if self.layout == CHANNELS_LAST else 0

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Flat float64 bounds of the entry as fed (one-hot and binary elements: 0 and 1)."""
        if self.kind != "Box":
            return np.zeros(self.size), np.ones(self.size)
        return tuple(self.to_fed(np.asarray(b, np.float64)[None]).reshape(-1)
                     for b in (self.space.low, self.space.high))

    def to_fed(self, values: np.ndarray) -> np.ndarray:
        """[B, *model shape] -> [B, *shape as fed] (an image transposed to channel-last)."""
        if self.image and self.layout == CHANNELS_LAST:
            return values.transpose(0, 2, 3, 1)
        return values

    def to_model(self, rows: np.ndarray, normalized: bool = False) -> np.ndarray:
        """Flat float rows of this entry -> the values predict() takes, in the model's layout
        and dtype (indices for Discrete and MultiDiscrete). A `normalized` entry holds what
        VecNormalize gave the policy, which is float32 whatever the space's dtype: the policy
        was trained on those values (cast back to an integer or float16 Box's dtype, they
        would be rounded, truncated or wrapped)."""
        n = len(rows)
        if self.kind == "Box":
            values = rows.reshape(n, *self.shape)
            if self.image and self.layout == CHANNELS_LAST:
                values = values.transpose(0, 3, 1, 2)
            dtype = np.float32 if normalized else self.space.dtype
            return np.ascontiguousarray(values).astype(dtype)
        if self.kind == "Discrete":
            return np.argmax(rows, axis=1).astype(self.space.dtype)
        if self.kind == "MultiDiscrete":
            splits = np.split(rows, np.cumsum(self.space.nvec)[:-1], axis=1)
            return np.stack([np.argmax(s, axis=1) for s in splits], axis=1).astype(
                self.space.dtype)
        return rows.astype(self.space.dtype)  # MultiBinary

    def describe(self) -> dict:
        """The entry's space for the `observation_space` metadata entry."""
        space = self.space
        if self.kind == "Discrete":
            return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
        if self.kind == "MultiDiscrete":
            return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec]}
        if self.kind == "MultiBinary":
            return {"type": "MultiBinary", "n": int(space.n)}
        low, high = self.bounds()
        described = {"type": "Box", "shape": list(self.shape),
                     "dtype": np.dtype(space.dtype).name,
                     "low": _bound_values(low), "high": _bound_values(high)}
        if self.image:
            described["layout"] = self.layout
        return described


def _bound_values(values: np.ndarray):
    """One number when every element has it, else a flat list; an infinite bound is null."""
    def number(v):
        return None if not np.isfinite(v) else (
            int(v) if float(v).is_integer() and abs(v) < 2**53 else float(v))

    if len(values) and (values == values[0]).all():  # an image's: one number, found at once
        return number(values[0])
    listed = [number(v) for v in values]
    return listed[0] if len(set(map(repr, listed))) == 1 else listed


class ObservationLayout:
    """Where each entry of an observation lies in the flat rows the artifact takes."""

    def __init__(self, space, image_layout: str = CHANNELS_LAST):
        self.space = space
        self.is_dict = type(space).__name__ == "Dict"
        items = list(space.spaces.items()) if self.is_dict else [(None, space)]
        entries, start = [], 0
        for key, sub in items:
            image = is_image(sub)
            size = _flat_size(sub)
            entries.append(Entry(key, sub, start, size, image, image_layout if image else None))
            start += size
        self.entries: tuple[Entry, ...] = tuple(entries)
        self.flatdim = start

    @property
    def features(self) -> frozenset[str]:
        """What the observation holds beyond a vector: "image", "dict" (empty for a vector)."""
        return frozenset([*(["dict"] if self.is_dict else []),
                          *(["image"] if self.images else [])])

    @property
    def images(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.image)

    def describe(self) -> dict:
        """The JSON value of the `observation_space` metadata entry."""
        if not self.is_dict:
            return self.entries[0].describe()
        return {"type": "Dict",
                "spaces": [{"key": e.key, "space": e.describe()} for e in self.entries]}

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        parts = [e.bounds() for e in self.entries]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def predict_input(self, rows: np.ndarray, normalized: np.ndarray | None = None):
        """Flat rows [B, flatdim] -> what predict() takes: an array in the model's shape and
        dtype, or a dict of them. `normalized`: per flat element, whether the rows hold it as
        VecNormalize normalized it (Entry.to_model)."""
        values = {e.key: e.to_model(rows[:, e.start:e.stop], normalized is not None
                                    and bool(normalized[e.start:e.stop].any()))
                  for e in self.entries}
        return values if self.is_dict else values[None]

    def discrete_groups(self) -> tuple[tuple[int, int], ...]:
        """(start, stop) of every one-hot group in a flat row."""
        groups = []
        for e in self.entries:
            if e.kind == "Discrete":
                groups.append((e.start, e.stop))
            elif e.kind == "MultiDiscrete":
                edges = e.start + np.concatenate([[0], np.cumsum(e.space.nvec)])
                groups += [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
        return tuple(groups)

    def integral(self) -> np.ndarray:
        """Per flat element: is it an integer (an integer Box, pixels included, or binary)?"""
        mask = np.zeros(self.flatdim, dtype=bool)
        for e in self.entries:
            if e.kind == "MultiBinary" or (e.kind == "Box"
                                           and np.issubdtype(e.space.dtype, np.integer)):
                mask[e.start:e.stop] = True
        return mask

    def float_bits(self) -> int:
        """Bits of the narrowest float Box (at most 32): its values are drawn at that width."""
        bits = [8 * np.dtype(e.space.dtype).itemsize for e in self.entries
                if e.kind == "Box" and np.issubdtype(e.space.dtype, np.floating)]
        return min([32, *bits])


def _flat_size(space) -> int:
    kind = type(space).__name__
    if kind == "Discrete":
        return int(space.n)
    if kind == "MultiDiscrete":
        return int(np.sum(space.nvec))
    return math.prod(space.shape)


def declared_layout(declared: dict) -> ObservationLayout:
    """The layout of an artifact's declared `observation_space` (metadata.parse_observation_space
    output), as if the space were the model's: images channel-first, fed in the declared layout.
    For an artifact checked without its model."""
    from collections import OrderedDict

    import gymnasium

    from .metadata import declared_bounds, image_layout

    spaces = gymnasium.spaces

    def space_of(entry: dict):
        kind = entry["type"]
        if kind == "Discrete":
            return spaces.Discrete(entry["n"], start=entry["start"])
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(entry["nvec"])
        if kind == "MultiBinary":
            return spaces.MultiBinary(entry["n"])
        shape = tuple(entry["shape"])
        low, high = (declared_bounds(entry[name], math.prod(shape), unbounded).reshape(shape)
                     for name, unbounded in (("low", -np.inf), ("high", np.inf)))
        if entry.get("layout") == CHANNELS_LAST:  # SB3 keeps images channel-first
            shape = (shape[2], shape[0], shape[1])
            low, high = low.transpose(2, 0, 1), high.transpose(2, 0, 1)
        dtype = np.dtype(entry["dtype"])
        if dtype.kind in "iu":  # an unbounded integer side: the dtype's own limit
            info = np.iinfo(dtype)
            low, high = np.clip(low, info.min, info.max), np.clip(high, info.min, info.max)
        return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)

    if declared["type"] == "Dict":  # an OrderedDict keeps the declared order (no sorting)
        space = spaces.Dict(OrderedDict((e["key"], space_of(e["space"]))
                                        for e in declared["spaces"]))
    else:
        space = space_of(declared)
    return ObservationLayout(space, image_layout(declared) or CHANNELS_LAST)
