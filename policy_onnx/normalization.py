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
    """The observation statistics of one VecNormalize file."""
    path: Path
    sha256: str
    norm_obs: bool  # False: the file normalizes rewards only, observations pass unchanged
    mean: np.ndarray  # float64, the observation's shape
    var: np.ndarray
    epsilon: float
    clip_obs: float

    @property
    def std(self) -> np.ndarray:
        """The divisor, sqrt(var + epsilon), in float64."""
        return np.sqrt(self.var + self.epsilon)

    def _standardized(self, obs: np.ndarray) -> np.ndarray:
        """(obs - mean) / sqrt(var + epsilon) in float64, for `obs` [B, *shape]."""
        return (np.asarray(obs, np.float64) - self.mean) / self.std

    def apply(self, obs: np.ndarray) -> np.ndarray:
        """What VecNormalize.normalize_obs gives the policy for `obs` [B, *shape]: float64
        arithmetic, then float32."""
        if not self.norm_obs:
            return obs
        return np.clip(self._standardized(obs), -self.clip_obs, self.clip_obs).astype(np.float32)

    def at_clip(self, rows: np.ndarray) -> np.ndarray:
        """Per flattened raw row: does some component of its normalized observation reach
        +-clip_obs?"""
        if not self.norm_obs:
            return np.zeros(len(rows), dtype=bool)
        standardized = self._standardized(np.reshape(rows, (len(rows), *self.mean.shape)))
        return (np.abs(standardized) >= self.clip_obs).reshape(len(rows), -1).any(axis=1)

    def describe(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "norm_obs": self.norm_obs,
                "clip_obs": self.clip_obs, "epsilon": self.epsilon}


def load_statistics(path: Path, observation_shape: tuple[int, ...]) -> Normalization:
    """Read a VecNormalize pickle safely and check it against the model's observation shape."""
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
    rms_state = getattr(rms, "state", None)
    if not isinstance(rms_state, dict) or not {"mean", "var"} <= set(rms_state):
        if isinstance(rms, dict):
            raise ModelLoadError(f"--vecnormalize {path}: statistics per dict key "
                                 "(norm_obs_keys) are not supported yet")
        raise ModelLoadError(f"--vecnormalize {path}: not VecNormalize statistics (no obs_rms "
                             f"with mean and var); {fix}")
    mean = np.asarray(rms_state["mean"], dtype=np.float64)
    var = np.asarray(rms_state["var"], dtype=np.float64)
    epsilon = float(state.get("epsilon", 1e-8))
    clip_obs = float(state.get("clip_obs", 10.0))
    shape = tuple(observation_shape)
    if mean.shape != shape or var.shape != shape:
        raise ModelLoadError(
            f"--vecnormalize {path}: statistics of shape {mean.shape}, but the model's "
            f"observations have shape {shape}: they belong to another model; {fix}")
    usable = (np.isfinite(mean).all() and np.isfinite(var).all() and (var >= 0).all()
              and math.isfinite(epsilon) and epsilon >= 0 and clip_obs > 0)
    if not usable or not (var + epsilon > 0).all():
        raise ModelLoadError(f"--vecnormalize {path}: the statistics are not usable (non-finite "
                             "or negative variance, or clip_obs <= 0); " + fix)
    return Normalization(path=path, sha256=sha256(path), norm_obs=bool(state.get("norm_obs", True)),
                         mean=mean, var=var, epsilon=epsilon, clip_obs=clip_obs)



def attach(loaded, vecnormalize: str | None) -> None:
    """Give a loaded model its statistics: `vecnormalize` is a file, "none" (check without), or
    None (look for them in the RL Zoo's and the Hub's layouts)."""
    if vecnormalize == "none":
        return
    path = Path(vecnormalize) if vecnormalize else find_statistics(loaded.path)
    if path is not None:
        loaded.normalization = load_statistics(path, tuple(loaded.sb3.observation_space.shape))
