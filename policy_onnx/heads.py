"""The deterministic action of an SB3 policy as a plain torch module, one class per family.

A head computes what `predict(obs, deterministic=True)` computes, without building a
`torch.distributions` object (the default ONNX exporter cannot trace those). Its input is the
flattened observation batch `[B, obs_dim]`; its output depends on the artifact style:

- transform "none": the final action, post-processing baked in (clip, or tanh + unscale);
- transform "clip": the raw mean, for a runtime that clips to the declared bounds;
- transform "tanh": tanh of the mean, for a runtime that applies action_scale/action_offset.

A family only says how to compute the mean (before squashing and clipping) and whether
predict() squashes it with tanh; the post-processing is shared. A model trained under
VecNormalize gets its observation normalization in front (`ObservationNormalizer`): the head
takes raw observations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .observations import CHANNELS_LAST


class ObservationNormalizer(nn.Module):
    """VecNormalize's clip((obs - mean) / sqrt(var + epsilon), +-clip_obs) on flat rows (of a
    Dict, only the elements of the entries it normalizes).
    Float32 inputs use the statistics rounded to float32, as an exported graph holds them;
    float64 inputs (the rounding-noise reference) use them as saved, in float64."""

    def __init__(self, normalization):
        super().__init__()
        mean = normalization.mean.reshape(-1)
        std = normalization.std.reshape(-1)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.exact = (torch.as_tensor(mean, dtype=torch.float64),
                      torch.as_tensor(std, dtype=torch.float64))
        self.clip_obs = float(normalization.clip_obs)
        self.partial = normalization.normalized is not None  # Dict entries outside norm_obs_keys
        if self.partial:
            self.register_buffer("normalized", torch.as_tensor(normalization.normalized))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        mean, std = self.exact if obs.dtype == torch.float64 else (self.mean, self.std)
        normalized = torch.clamp((obs - mean) / std, -self.clip_obs, self.clip_obs)
        return torch.where(self.normalized, normalized, obs) if self.partial else normalized


class Preprocessor(nn.Module):
    """SB3's preprocessing inside the graph: flat rows as the runtime feeds them -> what the
    policy's features extractor takes (a tensor, or a dict of tensors): each entry sliced out,
    reshaped, an image transposed to channel-first and divided by 255 when the policy
    normalizes images; one-hot and binary entries pass as they are (SB3's own encoding)."""

    def __init__(self, layout: ObservationLayout, normalize_images: bool):
        super().__init__()
        self.layout = layout
        self.normalize_images = normalize_images

    def forward(self, obs: torch.Tensor):
        values = {}
        for e in self.layout.entries:
            x = obs if len(self.layout.entries) == 1 else obs[:, e.start:e.stop]
            if e.kind == "Box":
                x = x.reshape((-1, *e.shape))
                if e.image and e.layout == CHANNELS_LAST:
                    x = x.permute(0, 3, 1, 2)
                if e.image and self.normalize_images:
                    x = x / 255.0
            values[e.key] = x
        return values if self.layout.is_dict else values[None]


class ObservationInput(nn.Module):
    """Turns the flat raw observation rows a runtime feeds into what the policy's extractor
    takes: normalized (if the model was trained under VecNormalize), then preprocessed as SB3
    does (Preprocessor: reshaped, images transposed and scaled, dict entries split).
    Both are set by head_for."""

    def _observations(self, obs: torch.Tensor):
        # SB3's own preprocessing would cast to float32: the Preprocessor keeps the dtype, so
        # that a float64 copy of the head stays float64.
        if "normalizer" in self._modules:
            obs = self._modules["normalizer"](obs)
        return self._modules["preprocess"](obs)


class BoxHead(ObservationInput):
    """A policy with a Box action space: mean, then predict()'s clip or tanh + unscale."""

    squash: bool
    structure = "plain"

    def __init__(self, policy, transform: str = "none"):
        super().__init__()
        allowed = ("none", "tanh") if self.squash else ("none", "clip")
        if transform not in allowed:
            raise ValueError(
                f"action_transform {transform!r} does not fit this policy "
                f"({'squashed with tanh' if self.squash else 'clipped'} by predict()): choose "
                f"one of {', '.join(allowed)}")
        self.policy = policy
        self.transform = transform
        space = policy.action_space
        self.register_buffer("low", torch.as_tensor(space.low, dtype=torch.float32).reshape(-1))
        self.register_buffer("high", torch.as_tensor(space.high, dtype=torch.float32).reshape(-1))

    def mean(self, obs: torch.Tensor) -> torch.Tensor:
        """The mean of the action distribution, before squashing and clipping."""
        raise NotImplementedError

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.post(self.mean(obs))

    def post(self, mean: torch.Tensor) -> torch.Tensor:
        """predict()'s post-processing of the mean, as far as this artifact style bakes it in."""
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


class ActorCriticHead(BoxHead):
    """PPO / A2C / TRPO: the Gaussian mean (gSDE included); squashed only with squash_output."""

    def __init__(self, policy, transform: str = "none"):
        self.squash = bool(policy.squash_output)
        super().__init__(policy, transform)

    def mean(self, obs):
        features = self.policy.pi_features_extractor(self._observations(obs))
        return self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))

    @property
    def raw_module(self) -> nn.Module:
        """The module whose output is the raw action in SB3's own predict() too."""
        return self.policy.action_net


class SquashedGaussianHead(BoxHead):
    """SAC / TQC: the mean of the squashed Gaussian (gSDE included), always tanh + unscale."""

    squash = True

    def mean(self, obs):
        actor = self.policy.actor
        return actor.mu(actor.latent_pi(actor.features_extractor(self._observations(obs))))


class DeterministicActorHead(BoxHead):
    """TD3 / DDPG: the actor network without its final Tanh, always tanh + unscale."""

    squash = True

    def __init__(self, policy, transform: str = "none"):
        super().__init__(policy, transform)
        if not isinstance(policy.actor.mu[-1], nn.Tanh):
            raise ValueError(f"the actor does not end in Tanh: {policy.actor.mu[-1]}")

    def mean(self, obs):
        actor = self.policy.actor
        return actor.mu[:-1](actor.features_extractor(self._observations(obs)))


class ARSHead(BoxHead):
    """ARS (sb3-contrib), linear or MLP: the network's output; squash_output policies end in
    Tanh (then unscale), the others are clipped."""

    def __init__(self, policy, transform: str = "none"):
        self.squash = bool(policy.squash_output)
        super().__init__(policy, transform)
        if self.squash and not isinstance(policy.action_net[-1], nn.Tanh):
            raise ValueError(f"the squashed ARS network does not end in Tanh: "
                             f"{policy.action_net[-1]}")

    def mean(self, obs):
        net = self.policy.action_net
        return (net[:-1] if self.squash else net)(
            self.policy.features_extractor(self._observations(obs)))


class DiscreteHead(ObservationInput):
    """A policy with a discrete action space: scores (Q-values, logits), then predict()'s
    selection. The output is the final action: no runtime transform applies."""

    squash = False
    structure = "plain"

    def __init__(self, policy, transform: str = "none"):
        super().__init__()
        if transform != "none":
            raise ValueError(f"action_transform {transform!r} does not fit a discrete policy: "
                             "only none")
        self.policy = policy
        self.transform = transform

    def scores(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.argmax(scores, dim=1)

    def post(self, scores: torch.Tensor) -> torch.Tensor:
        return self.select(scores)

    def forward(self, obs: torch.Tensor, scores: bool = False) -> torch.Tensor:
        values = self.scores(obs)
        return values if scores else self.select(values)

    def scale_offset(self) -> tuple[np.ndarray, np.ndarray]:
        size = int(np.prod(self.policy.action_space.shape)) or 1
        return np.ones(size), np.zeros(size)


class QValueHead(DiscreteHead):
    """DQN: argmax of the Q-values."""

    def scores(self, obs):
        q_net = self.policy.q_net
        return q_net.q_net(q_net.features_extractor(self._observations(obs)))


class QuantileHead(DiscreteHead):
    """QR-DQN: argmax of the quantiles' mean."""

    def scores(self, obs):
        net = self.policy.quantile_net
        quantiles = net.quantile_net(net.features_extractor(self._observations(obs)))
        return quantiles.view(-1, net.n_quantiles, int(net.action_space.n)).mean(dim=1)


class ARSDiscreteHead(DiscreteHead):
    """ARS with a Discrete action: argmax of the network's output."""

    def scores(self, obs):
        return self.policy.action_net(self.policy.features_extractor(self._observations(obs)))


class CategoricalHead(DiscreteHead):
    """PPO / A2C / TRPO with a Discrete space: argmax of the logits."""

    def scores(self, obs):
        features = self.policy.pi_features_extractor(self._observations(obs))
        return self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))

    raw_module = ActorCriticHead.raw_module


class MultiCategoricalHead(CategoricalHead):
    """MultiDiscrete: argmax of each split of the logits."""

    def select(self, scores):
        splits = torch.split(scores, [int(n) for n in self.policy.action_space.nvec], dim=1)
        return torch.stack([torch.argmax(split, dim=1) for split in splits], dim=1)


class BernoulliHead(CategoricalHead):
    """MultiBinary: round(sigmoid(logits)), as float32 like predict()."""

    def select(self, scores):
        return torch.round(torch.sigmoid(scores))


class MaskedHead:
    """MaskablePPO: a second input `action_masks` [B, m] (True allows a choice); masked logits
    are set to -1e8, as MaskableCategorical does, before the selection."""

    structure = "masked"

    @property
    def mask_width(self) -> int:
        space = self.policy.action_space
        return int(np.sum(space.nvec)) if hasattr(space, "nvec") else int(space.n)

    def forward(self, obs, action_masks=None, scores: bool = False):
        logits = self.scores(obs)
        if action_masks is not None:
            logits = torch.where(action_masks, logits, torch.full_like(logits, -1e8))
        return logits if scores else self.select(logits)


class MaskedCategoricalHead(MaskedHead, CategoricalHead):
    pass


class MaskedMultiCategoricalHead(MaskedHead, MultiCategoricalHead):
    pass


class RecurrentHead(nn.Module):
    """RecurrentPPO: one step of the actor LSTM, then the head of the action space's family.

    Inputs obs [B, obs_dim], state_h and state_c [layers, B, hidden], episode_start [B] (1.0
    zeroes the state, as predict() does); outputs the action and the next state.
    """

    structure = "recurrent"
    squash = False

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.policy = inner.policy
        self.transform = inner.transform
        self.squash = inner.squash
        lstm = self.policy.lstm_actor
        self.state_shape = (lstm.num_layers, lstm.hidden_size)

    def forward(self, obs, state_h, state_c, episode_start, scores: bool = False):
        keep = (1.0 - episode_start).reshape(1, -1, 1)
        features = self.policy.pi_features_extractor(self.inner._observations(obs))
        latent, (next_h, next_c) = self.policy.lstm_actor(
            features.unsqueeze(0), (keep * state_h, keep * state_c))
        raw = self.policy.action_net(self.policy.mlp_extractor.forward_actor(latent[0]))
        return (raw if scores else self.inner.post(raw)), next_h, next_c

    def scale_offset(self):
        return self.inner.scale_offset()


BOX_HEADS = {"PPO": ActorCriticHead, "A2C": ActorCriticHead, "TRPO": ActorCriticHead,
             "SAC": SquashedGaussianHead, "TQC": SquashedGaussianHead,
             "CrossQ": SquashedGaussianHead, "ARS": ARSHead,
             "TD3": DeterministicActorHead, "DDPG": DeterministicActorHead}
ON_POLICY_DISCRETE_HEADS = {"Discrete": CategoricalHead, "MultiDiscrete": MultiCategoricalHead,
                            "MultiBinary": BernoulliHead}


def action_kind(space) -> str:
    return type(space).__name__


def head_for(loaded, transform: str = "none") -> nn.Module:
    """The head of a loaded model's family, taking raw observations."""
    policy = loaded.sb3.policy
    kind = action_kind(policy.action_space)
    if loaded.algorithm == "RecurrentPPO":
        inner = ActorCriticHead if kind == "Box" else ON_POLICY_DISCRETE_HEADS[kind]
        return RecurrentHead(_observing(inner(policy, transform), loaded)).eval()
    if kind == "Box":
        head = BOX_HEADS[loaded.algorithm]
    elif loaded.algorithm == "DQN":
        head = QValueHead
    elif loaded.algorithm == "QR-DQN":
        head = QuantileHead
    elif loaded.algorithm == "ARS":
        head = ARSDiscreteHead
    elif loaded.algorithm == "MaskablePPO":
        head = {"Discrete": MaskedCategoricalHead,
                "MultiDiscrete": MaskedMultiCategoricalHead}[kind]
    else:
        head = ON_POLICY_DISCRETE_HEADS[kind]
    return _observing(head(policy, transform), loaded).eval()


def _observing(head: ObservationInput, loaded) -> ObservationInput:
    """The head with its observation input: normalizer (if any) and preprocessing."""
    normalization = loaded.normalization
    if normalization is not None and normalization.norm_obs:
        head.normalizer = ObservationNormalizer(normalization)
    head.preprocess = Preprocessor(loaded.layout,
                                   getattr(loaded.sb3.policy, "normalize_images", True))
    return head
