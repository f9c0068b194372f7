"""The deterministic action of an SB3 policy as a plain torch module, one class per family.

A head computes what `predict(obs, deterministic=True)` computes, without building a
`torch.distributions` object (the default ONNX exporter cannot trace those). Its input is the
flattened observation batch `[B, obs_dim]`; its output depends on the artifact style:

- transform "none": the final action, post-processing baked in (clip, or tanh + unscale);
- transform "clip": the raw mean, for a runtime that clips to the declared bounds;
- transform "tanh": tanh of the mean, for a runtime that applies action_scale/action_offset.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class GaussianHead(nn.Module):
    """PPO / A2C / TRPO with a Box action space: the Gaussian mean (gSDE included)."""

    def __init__(self, policy, transform: str = "none"):
        super().__init__()
        squash = bool(policy.squash_output)
        allowed = ("none", "tanh") if squash else ("none", "clip")
        if transform not in allowed:
            raise ValueError(
                f"action_transform {transform!r} does not fit this policy "
                f"(squash_output={squash}): choose one of {', '.join(allowed)}")
        self.policy = policy
        self.transform = transform
        self.squash = squash
        self.obs_shape = tuple(policy.observation_space.shape)
        space = policy.action_space
        self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32).reshape(-1))
        self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32).reshape(-1))

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean of the action distribution, before squashing and clipping."""
        # For a vector Box, SB3's preprocessing is only a cast: call the extractor directly so
        # that a float64 copy of the head stays float64.
        features = self.policy.pi_features_extractor(obs.reshape((-1, *self.obs_shape)))
        latent = self.policy.mlp_extractor.forward_actor(features)
        return self.policy.action_net(latent)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean = self.mean(obs)
        if self.squash:
            squashed = torch.tanh(mean)
            if self.transform == "tanh":
                return squashed
            return self.low + 0.5 * (squashed + 1.0) * (self.high - self.low)
        if self.transform == "clip":
            return mean
        return torch.clamp(mean, self.low, self.high)

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """action_scale and action_offset metadata for this head's transform."""
        low = self.low.double().numpy()
        high = self.high.double().numpy()
        if self.transform == "tanh":
            return (high - low) / 2.0, (high + low) / 2.0
        return np.ones_like(low), np.zeros_like(low)


def head_for(loaded, transform: str = "none") -> nn.Module:
    """The head of a loaded model's family (one family so far)."""
    return GaussianHead(loaded.sb3.policy, transform).eval()
