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
from .load import AllowListUnpickler, ModelLoadError, RefusedGlobal

# Where people keep the statistics beside a model: the RL Zoo's `<dir>/<name>/vecnormalize.pkl`
# for `<dir>/<name>.zip`, and a Hub repository's `vec_normalize.pkl` beside the zip.
ZOO_NAME = "vecnormalize.pkl"
HUB_NAME = "vec_normalize.pkl"
MAX_STATISTICS_BYTES = 64 * 2**20


def find_statistics(model_path: Path) -> Path | None:
    """The statistics file of a model in the RL Zoo's or the Hub's layout, if there is one."""
    for candidate in (model_path.parent / model_path.stem / ZOO_NAME,
                      model_path.parent / HUB_NAME):
        if candidate.is_file():
            return candidate
    return None


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

    def describe(self) -> dict:
        keys = {"keys": list(self.keys)} if self.keys is not None else {}
        return {"path": str(self.path), "sha256": self.sha256, "norm_obs": self.norm_obs,
                "clip_obs": self.clip_obs, "epsilon": self.epsilon, **keys}


def load_statistics(path: Path, layout) -> Normalization:
    """Read a VecNormalize pickle safely and check it against the model's observation
    `layout` (observations.ObservationLayout)."""
    fix = ("pass the vecnormalize.pkl saved with this model (VecNormalize.save), or "
           "--vecnormalize none to check without normalization")
    check_given_file(path, "--vecnormalize", MAX_STATISTICS_BYTES, fix, ModelLoadError)
    try:
        stored = _StatisticsUnpickler(io.BytesIO(path.read_bytes())).load()
    except RefusedGlobal as refused:
        raise ModelLoadError(
            f"--vecnormalize {path}: refused to unpickle {refused.qualified_name}: it is not "
            f"part of VecNormalize statistics, and loading it could run code; {fix}") from None
    except Exception as exc:  # corrupt pickles: truncated, not a pickle, bad reconstruction
        raise ModelLoadError(f"--vecnormalize {path}: unreadable ({type(exc).__name__}: {exc}); "
                             f"{fix}") from None
    state = getattr(stored, "state", None)
    rms = state.get("obs_rms") if isinstance(state, dict) else None
    if isinstance(rms, dict) != layout.is_dict:
        raise ModelLoadError(
            f"--vecnormalize {path}: statistics {'per dict key' if isinstance(rms, dict) else 'of one array'}"
            f", but the model's observations are {'a Dict' if layout.is_dict else 'one array'}: "
            f"they belong to another model; {fix}")
    per_key = rms if isinstance(rms, dict) else {None: rms}
    keys = None
    if layout.is_dict:  # SB3 2.x names them norm_obs_keys, 1.x obs_keys
        named = state.get("norm_obs_keys", state.get("obs_keys", per_key.keys()))
        keys = tuple(e.key for e in layout.entries if e.key in set(named))
    means, variances, normalized = [], [], []
    for entry in layout.entries:
        if keys is not None and entry.key not in keys:
            means.append(np.zeros(entry.size))
            variances.append(np.ones(entry.size))
            normalized.append(np.zeros(entry.size, dtype=bool))
            continue
        where = f"'{entry.key}'" if entry.key is not None else "the observation"
        rms_state = getattr(per_key.get(entry.key), "state", None)
        if not isinstance(rms_state, dict) or not {"mean", "var"} <= set(rms_state):
            raise ModelLoadError(f"--vecnormalize {path}: not VecNormalize statistics (no "
                                 f"obs_rms with mean and var for {where}); {fix}")
        if entry.image:
            raise ModelLoadError(f"--vecnormalize {path}: statistics over the image {where} "
                                 "are not supported (SB3 scales images by 1/255 instead)")
        mean = np.asarray(rms_state["mean"], dtype=np.float64)
        var = np.asarray(rms_state["var"], dtype=np.float64)
        shape = tuple(entry.shape)
        if entry.kind != "Box" or mean.shape != shape or var.shape != shape:
            raise ModelLoadError(
                f"--vecnormalize {path}: statistics of shape {mean.shape} for {where}, which "
                f"is {entry.space} in the model: they belong to another model; {fix}")
        means.append(mean.reshape(-1))
        variances.append(var.reshape(-1))
        normalized.append(np.ones(entry.size, dtype=bool))
    mean, var = np.concatenate(means), np.concatenate(variances)
    epsilon = float(state.get("epsilon", 1e-8))
    clip_obs = float(state.get("clip_obs", 10.0))
    usable = (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()
              and math.isfinite(epsilon) and epsilon >= 0 and clip_obs > 0)
    if not usable or not (var + epsilon > 0).all():
        raise ModelLoadError(f"--vecnormalize {path}: the statistics are not usable (non-finite "
                             "or negative variance, or clip_obs <= 0); " + fix)
    return Normalization(path=path, sha256=sha256(path), norm_obs=bool(state.get("norm_obs", True)),
                         mean=mean, var=var, epsilon=epsilon, clip_obs=clip_obs, keys=keys,
                         normalized=None if keys is None else np.concatenate(normalized))


def attach(loaded, vecnormalize: str | None) -> None:
    """Give a loaded model its statistics: `vecnormalize` is a file, "none" (check without), or
    None (look for them in the RL Zoo's and the Hub's layouts)."""
    if vecnormalize == "none":
        return
    path = Path(vecnormalize) if vecnormalize else find_statistics(loaded.path)
    if path is not None:
        loaded.normalization = load_statistics(path, loaded.layout)
