"""Observation normalization (SB3's VecNormalize): the statistics a policy was trained behind.

A policy trained under VecNormalize acted on `clip((obs - mean) / sqrt(var + epsilon),
-clip_obs, clip_obs)`, computed in float64 and cast to float32. The runtime reads raw observations
from the world, so the artifact takes raw observations and normalizes them itself; the oracle is
`predict()` of the normalized observation. The statistics are a pickle of the VecNormalize
object: read here through the allow-list, its classes replaced by stand-ins that only keep their
state (no code from the file or from SB3 runs while reading it).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .artifact import sha256
from .files import check_given_file
from .layouts import find_statistics, statistics_candidates, trained_normalized
from .load import AllowListUnpickler, ModelLoadError, RefusedGlobal

MAX_STATISTICS_BYTES = 64 * 2**20
FLOAT32_MAX = float(np.finfo(np.float32).max)


class _Stored:
    """Stands in for VecNormalize and RunningMeanStd: keeps the pickled state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_STAND_INS = {
    ("stable_baselines3.common.vec_env.vec_normalize", "VecNormalize"): _Stored,
    ("stable_baselines3.common.running_mean_std", "RunningMeanStd"): _Stored,
}


class _StatisticsUnpickler(AllowListUnpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _STAND_INS:
            return _STAND_INS[module, name]
        if (module, name) == ("builtins", "set"):  # norm_obs_keys of some SB3 versions
            return set
        return super().find_class(module, name)


@dataclass(frozen=True)
class Normalization:
    """The observation statistics of one VecNormalize file, flattened like the rows the
    artifact takes (observations.py)."""
    path: Path
    sha256: str
    norm_obs: bool  # False: the file normalizes rewards only, observations pass unchanged
    mean: np.ndarray  # float64, one per element of a flat row
    var: np.ndarray
    epsilon: float
    clip_obs: float
    # Dict observations: the entries VecNormalize normalized (norm_obs_keys), and per flat
    # element whether it belongs to one of them; None: the whole observation is normalized.
    keys: tuple[str, ...] | None = None
    normalized: np.ndarray | None = None

    @property
    def elements(self) -> np.ndarray:
        """Per flat element: does VecNormalize normalize it?"""
        every = np.full(self.mean.size, self.norm_obs)
        return every if self.normalized is None else every & self.normalized

    @property
    def std(self) -> np.ndarray:
        """The divisor, sqrt(var + epsilon), in float64."""
        return np.sqrt(self.var + self.epsilon)

    def _standardized(self, rows: np.ndarray) -> np.ndarray:
        """(obs - mean) / sqrt(var + epsilon) in float64, for flat rows."""
        return (np.asarray(rows, np.float64) - self.mean) / self.std

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """What VecNormalize.normalize_obs gives the policy for flat raw rows: float64
        arithmetic, then float32 (entries it does not normalize pass unchanged)."""
        if not self.norm_obs:
            return rows
        clipped = np.clip(self._standardized(rows), -self.clip_obs, self.clip_obs)
        if self.normalized is not None:
            clipped = np.where(self.normalized, clipped, rows)
        return clipped.astype(np.float32)

    def at_clip(self, rows: np.ndarray) -> np.ndarray:
        """Per flat raw row: does some normalized component reach +-clip_obs?"""
        if not self.norm_obs:
            return np.zeros(len(rows), dtype=bool)
        reached = np.abs(self._standardized(rows)) >= self.clip_obs
        if self.normalized is not None:
            reached &= self.normalized
        return reached.any(axis=1)

    def never_clips(self, low: np.ndarray, high: np.ndarray) -> str:
        """Why VecNormalize clips no observation whose flat elements lie within `low` and
        `high` (what a runtime can feed, ObservationDomain.feedable: an integer within its
        bounds, a float anywhere in its type's range), or "" when some normalized element can
        reach +-clip_obs there."""
        if math.isinf(self.clip_obs):
            return "clip_obs is inf: VecNormalize does not clip"
        with np.errstate(over="ignore"):
            reach = np.maximum(np.abs(low - self.mean), np.abs(high - self.mean)) / self.std
        if self.normalized is not None:
            reach = reach[self.normalized]
        largest = float(reach.max(initial=0.0))
        if largest >= self.clip_obs:
            return ""
        return (f"no observation of this space reaches clip_obs = {self.clip_obs:g}: "
                f"normalized, its elements lie within +-{largest:.3g}")

    def describe(self) -> dict:
        """For the header, the summary and the JSON report (clip_obs null: no clip, since JSON
        has no inf)."""
        keys = {"keys": list(self.keys)} if self.keys is not None else {}
        clip_obs = self.clip_obs if math.isfinite(self.clip_obs) else None
        return {"path": str(self.path), "sha256": self.sha256, "norm_obs": self.norm_obs,
                "clip_obs": clip_obs, "epsilon": self.epsilon, **keys}


def _unusable(mean: np.ndarray, var: np.ndarray, epsilon: float, clip_obs: float) -> str:
    """What makes the statistics unusable, named ("" when they are usable). VecNormalize
    divides by sqrt(var + epsilon) and clips at +-clip_obs (inf, a valid setting, switches the
    clip off); an artifact holds the mean and that divisor in float32 (the suite's export
    does, and the tolerance allows for it), so both must be float32 numbers, the divisor not 0
    there. Anything else would be a crash or a verdict on statistics no policy trained with."""
    for values, name, bad, rule in (
            (mean, "obs_rms.mean", ~(np.abs(mean) <= FLOAT32_MAX), "finite in float32"),
            (var, "obs_rms.var", ~((var >= 0) & np.isfinite(var)), "a finite number >= 0")):
        if bad.any():
            i = int(np.argmax(bad))
            return f"{name} is {float(values[i])!r} at element {i} (each must be {rule})"
    if not (math.isfinite(epsilon) and epsilon >= 0):
        return f"epsilon is {epsilon!r} (it must be a finite number >= 0)"
    if not clip_obs > 0:
        return f"clip_obs is {clip_obs!r} (it must be > 0; inf switches the clip off)"
    std = np.sqrt(var + epsilon)
    with np.errstate(over="ignore"):
        std32 = std.astype(np.float32)
    bad = ~((std32 > 0) & np.isfinite(std32))
    if bad.any():
        i = int(np.argmax(bad))
        return (f"sqrt(var + epsilon) is {float(std[i])!r} at element {i}, "
                f"{'0' if std32[i] == 0 else 'inf'} in float32, in which an artifact holds it")
    return ""


def load_statistics(path: Path, layout, given: bool = True,
                    goal_keys: tuple[str, ...] | None = None) -> Normalization:
    """Read a VecNormalize pickle safely and check it against the model's observation
    `layout` (observations.ObservationLayout). `given`: named by --vecnormalize (else found
    beside the model by layout); `goal_keys`: the dict keys an SB3 1.0-era HER agent's Box
    observation concatenates (LoadedModel.goal_keys), normalized per key."""
    named = f"--vecnormalize {path}" if given else \
        f"{path} (VecNormalize statistics found beside the model)"
    fix = ("pass the vecnormalize.pkl saved with this model (VecNormalize.save)" if given else
           "if it is not this model's, pass the statistics it was trained with: "
           "--vecnormalize PKL")
    check_given_file(path, named, MAX_STATISTICS_BYTES, fix, ModelLoadError)
    try:
        stored = _StatisticsUnpickler(io.BytesIO(path.read_bytes())).load()
    except RefusedGlobal as refused:
        raise ModelLoadError(
            f"{named}: refused to unpickle {refused.qualified_name}: it is not part of "
            f"VecNormalize statistics, and loading it could run code; {fix}") from None
    except Exception as exc:  # corrupt pickles: truncated, not a pickle, bad reconstruction
        raise ModelLoadError(f"{named}: unreadable ({type(exc).__name__}: {exc}); {fix}") from None
    state = getattr(stored, "state", None)
    rms = state.get("obs_rms") if isinstance(state, dict) else None
    if rms is None:
        raise ModelLoadError(f"{named}: not VecNormalize statistics (no obs_rms); {fix}")
    per_key = rms if isinstance(rms, dict) else {None: rms}
    if isinstance(rms, dict) and not layout.is_dict and goal_keys:
        # ObsDictWrapper flattened the goal dict after VecNormalize had normalized it per key.
        parts = [(key, per_key.get(key)) for key in goal_keys]
    elif isinstance(rms, dict) == layout.is_dict:
        parts = [(entry.key, entry) for entry in layout.entries]
    else:
        kept = f"per dict key ({', '.join(map(str, rms))})" if isinstance(rms, dict) \
            else "of one array"
        raise ModelLoadError(
            f"{named}: statistics {kept}, but the model's observation is "
            f"{'a Dict' if layout.is_dict else f'one {layout.space}'}: they do not fit its "
            f"observation; {fix}")
    keys = None
    if isinstance(rms, dict):  # SB3 2.x names them norm_obs_keys, 1.x obs_keys
        named_keys = set(state.get("norm_obs_keys", state.get("obs_keys", per_key.keys())))
        keys = tuple(key for key, _ in parts if key in named_keys)
    means, variances, normalized = [], [], []
    for key, part in parts:
        where = f"'{key}'" if key is not None else "the observation"
        rms_state = getattr(per_key.get(key), "state", None)
        entry = part if hasattr(part, "image") else None  # else a HER key's statistics
        readable = isinstance(rms_state, dict) and {"mean", "var"} <= set(rms_state)
        if keys is not None and key not in keys and (entry or readable):
            size = entry.size if entry else np.size(rms_state["mean"])
            means.append(np.zeros(size))
            variances.append(np.ones(size))
            normalized.append(np.zeros(size, dtype=bool))
            continue
        if not readable:
            raise ModelLoadError(f"{named}: not VecNormalize statistics (no obs_rms with mean "
                                 f"and var for {where}); {fix}")
        if entry is not None and entry.image:
            raise ModelLoadError(f"{named}: statistics over the image {where} are not supported "
                                 "(SB3 scales images by 1/255 instead)")
        try:
            mean = np.asarray(rms_state["mean"], dtype=np.float64)
            var = np.asarray(rms_state["var"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelLoadError(f"{named}: the mean and var of {where} are not arrays of "
                                 f"numbers; {fix}") from None
        shape = tuple(entry.shape) if entry else (mean.size,)
        if (entry is not None and entry.kind != "Box") or mean.shape != shape \
                or var.shape != shape:
            raise ModelLoadError(
                f"{named}: statistics of shape {mean.shape} for {where}, which is "
                f"{entry.space if entry else 'a vector'} in the model: they do not fit its "
                f"observation; {fix}")
        means.append(mean.reshape(-1))
        variances.append(var.reshape(-1))
        normalized.append(np.ones(mean.size, dtype=bool))
    mean, var = np.concatenate(means), np.concatenate(variances)
    if mean.size != layout.flatdim:
        raise ModelLoadError(
            f"{named}: the statistics of {', '.join(map(str, goal_keys or ()))} hold "
            f"{mean.size} elements, but the model's observation {layout.space} has "
            f"{layout.flatdim}: they do not fit its observation; {fix}")
    try:
        epsilon = float(state.get("epsilon", 1e-8))
        clip_obs = float(state.get("clip_obs", 10.0))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{named}: epsilon and clip_obs are not numbers; {fix}") from None
    problem = _unusable(mean, var, epsilon, clip_obs)
    if problem:
        raise ModelLoadError(f"{named}: the statistics are not usable: {problem}; {fix}")
    everything = all(n.all() for n in normalized)
    return Normalization(path=path, sha256=sha256(path), norm_obs=bool(state.get("norm_obs", True)),
                         mean=mean, var=var, epsilon=epsilon, clip_obs=clip_obs, keys=keys,
                         normalized=None if everything else np.concatenate(normalized))


def attach(loaded, vecnormalize: str | None) -> None:
    """Give a loaded model its statistics: `vecnormalize` is a file, "none" (check without), or
    None (look for them in the RL Zoo's and the Hub's layouts; a model whose configuration
    there says it was trained normalized, without statistics beside it, is refused: checked
    without them, it would get a verdict on observations it never saw)."""
    if vecnormalize == "none":
        return
    path = Path(vecnormalize) if vecnormalize else find_statistics(loaded.path)
    if path is not None:
        loaded.normalization = load_statistics(path, loaded.layout, given=bool(vecnormalize),
                                               goal_keys=loaded.goal_keys)
        return
    config = trained_normalized(loaded.path)
    if config is not None:
        raise ModelLoadError(
            f"--model {loaded.path}: trained with its observations normalized by VecNormalize "
            f"({config} says normalize), but no statistics were found beside it (looked for "
            f"{', '.join(map(str, statistics_candidates(loaded.path)))}); pass them with "
            "--vecnormalize PKL (the vecnormalize.pkl saved with the model)")
