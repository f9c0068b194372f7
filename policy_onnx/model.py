"""The trained model as the oracle: what `predict(obs, deterministic=True)` returns, the pre-clip
mean it clips, the float32 rounding noise of the computation, and the search for observations
whose mean leaves the action bounds. The only place that calls SB3 at check time.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .heads import ObservationNormalizer, action_kind, head_for
from .load import LoadedModel
from .strategies import (FLOAT32_MAX, MAX_MAGNITUDE, MaskSpace, ObservationDomain, example_rows,
                         rows_for)
from .tolerance import NOISE_FACTOR, action_unit, tolerance

FLOAT32_UNIT = 2.0 ** -24  # unit roundoff of float32
# Rows are not compared (Reference.decidable) where a partial sum of a hidden layer can reach
# HIDDEN_LIMIT (float32's largest, halved for the rounding of the bound), or where the output
# layer's, or the output itself, reaches SAFE_MAGNITUDE: a margin for the reductions a graph may
# fuse or reorder after it (sums of up to 1,024 outputs, e.g. QR-DQN's mean over its quantiles).
HIDDEN_LIMIT = FLOAT32_MAX / 2
SAFE_MAGNITUDE = FLOAT32_MAX * 2.0 ** -10
# Seconds of the searching thread's CPU time (time.thread_time: a busy machine does not cut it
# short) the each-action search (Reference.find_each_action) may take: past them its ascent
# stops where it is, and the search reports that it stopped (a Discrete(200) policy took over
# 15 minutes without one).
SEARCH_BUDGET = 5.0
# Rows the ascent toward the missing choices moves at once, at most (16 per choice below it).
ASCENT_ROWS = 256
ASCENT_STARTS = 16  # rows each objective ascends from (fewer for a large observation)
ASCENT_STEPS = 60
ASCENT_FINEST = 1e-5  # the ascent's last step, as a share of the range it searches


@dataclass(frozen=True)
class ChoiceSearch:
    """How far the each-action search got: the choices it found an observation for, of those
    predict() can make, and whether it stopped at its time budget (seconds) before its ascent
    ended."""
    reached: int
    possible: int
    stopped: bool
    budget: float


def _terms(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """|x| |W|^T + |b| of a linear layer (|x| * |W| + |b| of a convolution): the sum of the
    magnitudes of the terms each output adds up."""
    if isinstance(module, torch.nn.Conv2d):
        return torch.nn.functional.conv2d(
            x.abs(), module.weight.abs(), None if module.bias is None else module.bias.abs(),
            module.stride, module.padding, module.dilation, module.groups)
    magnitude = x.abs() @ module.weight.abs().T
    return magnitude if module.bias is None else magnitude + module.bias.abs()



def _decidable(hidden: np.ndarray, output: np.ndarray) -> np.ndarray:
    """Per row: are the network's magnitudes (Reference._raw_and_magnitudes) within the limits
    where predict()'s float32 arithmetic can be trusted?"""
    return (hidden < HIDDEN_LIMIT) & (output < SAFE_MAGNITUDE)


class Reference:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.sb3 = loaded.sb3
        self.algorithm = loaded.algorithm
        self.observation_space = self.sb3.observation_space
        self.action_space = self.sb3.action_space
        self.layout = loaded.layout
        self.obs_dim = self.layout.flatdim
        self.act_dim = math.prod(self.action_space.shape)  # 1 for Discrete
        self.kind = action_kind(self.action_space)
        self.head = head_for(loaded)
        self.structure = self.head.structure
        self.masked = self.structure == "masked"
        if self.kind == "Box":
            self.low = np.asarray(self.action_space.low, dtype=np.float64).reshape(-1)
            self.high = np.asarray(self.action_space.high, dtype=np.float64).reshape(-1)
        # predict() clips the mean of an unsquashed Box policy; squashed ones unscale tanh.
        self.clips = self.kind == "Box" and not self.head.squash and self.structure == "plain"
        self.normalization = loaded.normalization
        self.domain = ObservationDomain.of_layout(self.layout, self.normalization)
        self.choice_search: ChoiceSearch | None = None  # once find_each_action has run

    @cached_property
    def mask_space(self) -> MaskSpace | None:
        """The action masks the strategies draw for a masked policy (None for the others), with
        predict()'s choice with every action allowed, for the masks that exclude it."""
        if not self.masked:
            return None
        space = self.action_space
        groups = tuple(int(n) for n in space.nvec) if self.kind == "MultiDiscrete" \
            else (int(space.n),)
        return MaskSpace(groups, lambda obs: self.predict(obs).astype(np.int64))

    def predict_input(self, obs: np.ndarray):
        """What predict() is given for flat float32 raw rows: normalized as VecNormalize does
        (if the model was trained under it), then each entry in the model's shape, layout and
        dtype (observations.ObservationLayout) — a normalized entry as float32, what
        VecNormalize returns, whatever its space's dtype."""
        rows = np.asarray(obs, dtype=np.float32)
        if self.normalization is None:
            return self.layout.predict_input(rows)
        return self.layout.predict_input(self.normalization.apply(rows),
                                         self.normalization.elements)

    def examine(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One float32 pass of the network over flat raw rows: its raw output (the pre-clip,
        pre-squash mean of a Box policy; the scores of a discrete one) as float64, and per row
        whether predict() can decide there (`decidable`)."""
        raw, hidden, output = self._raw_and_magnitudes(obs)
        return raw, _decidable(hidden, output)

    def examine_and_predict(self, obs: np.ndarray, masks: np.ndarray | None = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """examine() and predict() of the same rows: (raw, decidable, predict()'s actions). In
        one pass of predict() itself where the family's raw output is a module's there
        (`head.raw_module`, an actor-critic's action net), measured by hooks; else, or where
        predict() cannot run on every row (its distribution rejects a NaN), examine() first
        and predict() on the rows where it can decide."""
        module = getattr(self.head, "raw_module", None)
        if module is not None and masks is None and self.structure == "plain":
            outputs = []
            handle = module.register_forward_hook(lambda _, __, out: outputs.append(out))
            try:
                expected, raw, hidden, output = self._measured(
                    len(obs), lambda: (self.predict(obs), outputs[-1]))
            except ValueError:
                pass
            else:
                return (raw.double().numpy(), _decidable(hidden, output), expected)
            finally:
                handle.remove()
        raw, decided = self.examine(obs)
        expected = np.full((len(obs), self.act_dim), np.nan)
        if decided.any():
            expected[decided] = self.predict(obs[decided],
                                             None if masks is None else masks[decided])
        return raw, decided, expected

    def magnitudes(self, obs: np.ndarray) -> np.ndarray:
        """Per row, the bound on the largest magnitude predict()'s network meets there (see
        `_raw_and_magnitudes`)."""
        _, hidden, output = self._raw_and_magnitudes(obs)
        return np.maximum(hidden, output)

    def decidable(self, obs: np.ndarray) -> np.ndarray:
        """Per row: can predict()'s float32 network be trusted to compute an answer there? Not
        where its sums can overflow: once the terms of a layer's sum reach float32's largest
        value, one order of adding them overflows and another does not (torch and ONNX Runtime
        add in different orders, and differently for a row alone and inside a batch), so there
        is no one action to compare with. Recurrent policies: always (REC-02 draws inside and
        beyond the bounds only)."""
        if self.structure == "recurrent":
            return np.ones(len(obs), dtype=bool)
        return self.examine(obs)[1]

    def raw(self, obs: np.ndarray) -> np.ndarray:
        """The raw output of examine() alone (one float32 pass), as float64."""
        with torch.no_grad():
            return self._raw(torch.as_tensor(obs, dtype=torch.float32)).double().numpy()

    def _raw(self, x: torch.Tensor) -> torch.Tensor:
        """The network's raw output: a Box policy's mean, a discrete policy's scores."""
        return self.head.mean(x) if self.kind == "Box" else self.head(x, scores=True)

    def _raw_and_magnitudes(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                             np.ndarray]:
        """The raw output, and per row two bounds on the magnitudes predict()'s float32 network
        meets. At every linear layer (and convolution): max|x| times its largest row sum of
        |W|, plus max|b|, which bounds each of its partial sums whatever order they are added in
        (and, through its input, what the layers before it made). The first bound is the
        hidden layers' largest; the second the output layer's (the last one run) and the
        output's. In float32, whose products and sums of magnitudes only round (an overflow to
        inf is past any limit anyway)."""
        with torch.no_grad():
            _, raw, hidden, output = self._measured(
                len(obs), lambda: (None, self._raw(torch.as_tensor(obs, dtype=torch.float32))))
        return raw.double().numpy(), hidden, output

    def _measured(self, n: int, forward) -> tuple:
        """(what `forward()` returns with the raw output of `n` rows: (result, raw tensor),
        then `_raw_and_magnitudes`' two bounds), the linear layers and convolutions it runs
        measured by hooks."""
        bounds = []  # per layer run, in order: per row

        def per_row(values: torch.Tensor) -> torch.Tensor:
            return torch.nan_to_num(values.abs().reshape(n, -1).amax(dim=1), nan=math.inf)

        def hook(module, inputs, output):
            gain, bias = self._gains[module]
            bounds.append(per_row(inputs[0].detach()) * gain + bias)

        hooks = [module.register_forward_hook(hook) for module in self._gains]
        try:
            result, raw = forward()
        finally:
            for handle in hooks:
                handle.remove()
        raw = raw.detach()
        zero = torch.zeros(n, dtype=torch.float32)
        hidden = torch.stack([zero, *bounds[:-1]]).amax(dim=0)
        output = torch.stack([zero, *bounds[-1:], per_row(raw) if n else zero]).amax(dim=0)
        return result, raw, hidden.double().numpy(), output.double().numpy()

    @cached_property
    def _gains(self) -> dict[torch.nn.Module, tuple[float, float]]:
        """Per linear layer and convolution: its largest sum of |W| over one output, and max|b|."""
        gains = {}
        for module in self.head.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                weight = module.weight.detach().abs().double()
                bias = 0.0 if module.bias is None else float(module.bias.detach().abs().max())
                gains[module] = (float(weight.reshape(len(weight), -1).sum(dim=1).max()), bias)
        return gains

    def at_clip(self, obs: np.ndarray) -> np.ndarray:
        """Per raw row: does its normalized observation reach +-clip_obs somewhere?"""
        if self.normalization is None:
            return np.zeros(len(obs), dtype=bool)
        return self.normalization.at_clip(obs)

    def predict(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """`model.predict(obs, deterministic=True)` for flattened float32 raw rows (with
        `action_masks` for a masked policy), as float64."""
        extra = {"action_masks": masks} if masks is not None else {}
        actions, _ = self.sb3.predict(self.predict_input(obs), deterministic=True, **extra)
        return np.asarray(actions, dtype=np.float64).reshape(len(obs), -1)

    def initial_state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """A recurrent policy's state at the start of an episode: zeros."""
        layers, hidden = self.head.state_shape
        zeros = np.zeros((layers, batch, hidden), dtype=np.float32)
        return zeros, zeros.copy()

    def step(self, obs: np.ndarray, state, episode_start: np.ndarray):
        """One recurrent step of `predict(obs, state, episode_start, deterministic=True)`:
        (actions as float64 [B, act_dim], next state)."""
        actions, state = self.sb3.predict(self.predict_input(obs), state=state,
                                          episode_start=episode_start, deterministic=True)
        return np.asarray(actions, dtype=np.float64).reshape(len(obs), -1), state

    @cached_property
    def _recurrent_head64(self):
        # nn.LSTM keeps its own references to its weights, so swapping them (_in_float64) does
        # not reach its computation: a float64 copy it is (recurrent policies have no gSDE
        # tensors to trip deepcopy).
        return copy.deepcopy(self.head).double()

    def step_outputs(self, obs, state, episode_start, double=False, scores=False):
        """The recurrent head's action (or, with `scores`, raw action-net output) and next
        state, computed in float32, or float64 with `double`, as float64 arrays."""
        dtype = torch.float64 if double else torch.float32
        args = [torch.as_tensor(np.asarray(a), dtype=dtype) for a in (obs, *state, episode_start)]
        head = self._recurrent_head64 if double else self.head
        with torch.no_grad():
            action, next_h, next_c = head(*args, scores=scores)
        return (action.double().numpy().reshape(len(obs), -1), next_h.double().numpy(),
                next_c.double().numpy())

    def warm_state(self, rng: np.random.Generator, envs: int, steps: int):
        """The state predict() reaches after `steps` steps of drawn observations from a reset:
        where a rollout starts late in an episode."""
        state = self.initial_state(envs)
        starts = np.ones(envs, dtype=np.float32)
        for _ in range(steps):
            _, state = self.step(self.domain.inside(rng, envs), state, starts)
            starts = np.zeros(envs, dtype=np.float32)
        return state

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """The pre-clip (pre-squash) mean, float32 computation, as float64."""
        with torch.no_grad():
            return self.head.mean(torch.as_tensor(obs, dtype=torch.float32)).double().numpy()

    @cached_property
    def _tensors64(self) -> list[tuple[dict, str, torch.Tensor]]:
        """(store, name, float64 copy) of every floating parameter and buffer of the head, each
        module once (PPO's features_extractor is also its pi_features_extractor)."""
        return [(store, name, tensor.detach().double())
                for module in self.head.modules()
                for store in (module._parameters, module._buffers)
                for name, tensor in store.items()
                if tensor is not None and tensor.is_floating_point()]

    @contextlib.contextmanager
    def _in_float64(self):
        """The head computing in float64 (its tensors swapped for float64 copies, then back)."""
        originals = [(store, name, store[name]) for store, name, _ in self._tensors64]
        for store, name, double in self._tensors64:
            store[name] = double
        try:
            yield
        finally:
            for store, name, original in originals:
                store[name] = original

    def scores(self, obs: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """A discrete policy's scores (Q-values, logits; masked ones at -1e8) that predict()
        selects from."""
        extra = {"action_masks": torch.as_tensor(masks)} if masks is not None else {}
        with torch.no_grad():
            return self.head(torch.as_tensor(obs, dtype=torch.float32), scores=True,
                             **extra).double().numpy()

    def rounding_noise(self, obs: np.ndarray, samples: int = 4, raw: bool = False
                       ) -> np.ndarray:
        """The oracle's own float32 rounding error per element of the action (with `raw`, of
        the network's raw output: a Box policy's mean, a discrete one's scores), estimated two
        ways, the larger kept: the measured |float32 - float64| of the computation, and stochastic arithmetic:
        `samples` float64 forwards in which every Linear (and Conv2d) output is perturbed by a
        simulated float32 accumulation error u * sqrt(n_in) * (|x| |W|^T + |b|) * N(0, 1), and the
        observation normalization (if any) by the error of normalizing in float32 with float32
        statistics, u * ((|x| + 2 |mean|) / std + 2 |out|) * N(0, 1) where the element is not
        clipped for certain (a clipped one is exactly +-clip_obs) (seeded, so the same
        observations give the same estimate). One batched pass holds the exact rows and the
        perturbed copies."""
        n = len(obs)
        rng = np.random.default_rng(0)

        def linear_error(module, x, output):
            terms = module.weight[0].numel() if isinstance(module, torch.nn.Conv2d) \
                else x.shape[-1]
            return FLOAT32_UNIT * math.sqrt(terms) * _terms(module, x)

        def normalization_error(module, x, output):
            # A clipped element is exactly +-clip_obs however |x| rounds: no error from |x|
            # there (an element within its rounding error of the clip may still round across).
            mean, std = module.exact
            error = FLOAT32_UNIT * ((x.abs() + 2.0 * mean.abs()) / std + 2.0 * output.abs())
            error = torch.where((x - mean).abs() / std - error >= module.clip_obs, 0.0, error)
            return error * module.normalized if module.partial else error

        def perturb(error):
            def hook(module, inputs, output):
                magnitude = error(module, inputs[0][n:], output[n:])
                noise = torch.as_tensor(rng.standard_normal(tuple(magnitude.shape)))
                return torch.cat([output[:n], output[n:] + magnitude * noise])
            return hook

        hooks = [m.register_forward_hook(perturb(linear_error)) for m in self.head.modules()
                 if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        hooks += [m.register_forward_hook(perturb(normalization_error))
                  for m in self.head.modules() if isinstance(m, ObservationNormalizer)]
        compute = self._raw if raw else self.head
        rows = torch.as_tensor(np.tile(obs, (samples + 1, 1)), dtype=torch.float64)
        try:
            with torch.no_grad():
                with self._in_float64():
                    out = compute(rows)
        finally:
            for hook in hooks:
                hook.remove()
        exact = out[:n]
        simulated = (out[n:].reshape(samples, n, -1) - exact).abs().amax(dim=0)
        with torch.no_grad():
            f32 = compute(torch.as_tensor(obs, dtype=torch.float32)).double()
            measured = (f32 - exact).abs()
        return torch.maximum(measured, simulated).numpy()

    @property
    def fixed_tolerance(self) -> np.ndarray:
        """The tolerance without its noise term: what every observation is allowed at least."""
        return tolerance(self.low, self.high)

    def tolerance(self, obs: np.ndarray) -> np.ndarray:
        """Per action element; discrete actions are compared exactly."""
        if self.kind != "Box" or not len(obs):
            return np.zeros((len(obs), self.act_dim))
        if self.structure == "recurrent":  # its noise is measured step by step in REC-02
            return np.broadcast_to(self.fixed_tolerance, (len(obs), self.act_dim))
        return tolerance(self.low, self.high, self.rounding_noise(obs))

    def within_rounding(self, obs: np.ndarray, final: np.ndarray, expected: np.ndarray
                        ) -> np.ndarray:
        """Per element of a Box action: is `final` an action predict()'s own float32 rounding
        could give? predict() post-processes (clips, or squashes and unscales) a mean it knows
        only within its rounding noise; the post-processing of every mean within 8 times that
        noise (plus the tolerance's fixed term) is as good an answer. Where tanh saturates and
        the noise reaches past 0, that is either bound: the sign of the mean is a rounding
        tie. Only where predict()'s own answer, `expected`, lies in that interval too: the
        interval comes from the suite's copy of the network, which must agree with predict()
        for a tie to mean anything."""
        mean = torch.as_tensor(self.mean(obs))
        reach = NOISE_FACTOR * torch.as_tensor(self.rounding_noise(obs, raw=True))
        with torch.no_grad():
            lowest = self.head.post(mean - reach).double().numpy()
            highest = self.head.post(mean + reach).double().numpy()
        slack = self.fixed_tolerance

        def inside(values):
            return (values >= lowest - slack) & (values <= highest + slack)

        return inside(final) & inside(expected)

    def overshoot(self, obs: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
        """Per row, how far (in action units) the pre-clip mean (computed here unless given)
        lies outside the bounds; <= 0 inside."""
        if not self.clips:
            return np.full(len(obs), -np.inf)
        mean = self.mean(obs) if mean is None else mean
        past = np.maximum(mean - self.high, self.low - mean) / action_unit(self.low, self.high)
        return past.max(axis=1)

    def find_out_of_bounds(self, seed: int = 0, pool: int = 4096, keep: int = 256) -> np.ndarray:
        """Observations whose pre-clip mean leaves the action bounds, by random draws over the
        domain (inside, beyond and far) and then gradient ascent on the mean toward each bound;
        empty if none was found."""
        if not self.clips:
            return np.empty((0, self.obs_dim), dtype=np.float32)
        rng = np.random.default_rng(seed)
        # Objective 2j pushes action element j up, objective 2j + 1 down.
        columns = torch.arange(self.act_dim).repeat_interleave(2)
        signs = torch.tensor([1.0, -1.0]).repeat(self.act_dim)

        def toward_bounds(x, owner):
            return signs[owner] * self.head.mean(x)[torch.arange(len(x)), columns[owner]]

        drawn = self._pool(rng, pool)
        rows = np.vstack([drawn, self._ascend(rng, toward_bounds, 2 * self.act_dim)[0]])
        hits = rows[self.overshoot(rows) > 0]
        return hits[rng.permutation(len(hits))[:keep]]

    # --- discrete choices: every action predict() can return ----------------------------------
    @cached_property
    def choices(self) -> list[tuple[int, int]]:
        """(action element, value) for every choice a discrete predict() can make."""
        if self.kind == "Discrete":
            return [(0, a) for a in range(int(self.action_space.n))]
        if self.kind == "MultiDiscrete":
            return [(j, v) for j, n in enumerate(self.action_space.nvec) for v in range(int(n))]
        return [(j, v) for j in range(self.act_dim) for v in (0, 1)]  # MultiBinary

    def _margins(self, scores: torch.Tensor, element: int) -> torch.Tensor:
        """[B, values]: how far each value of an action element wins over the best other one
        (> 0 where predict() chooses it). The only value of an element (Discrete(1), an nvec
        entry of 1) has no rival and always wins: its margin is +inf (the other values are
        taken next to a column of -inf, so that a lone value's rivals are not empty)."""
        if self.kind == "MultiBinary":
            logit = scores[:, element:element + 1]
            return torch.cat([-logit, logit], dim=1)
        space = self.action_space
        sizes = [int(n) for n in (space.nvec if self.kind == "MultiDiscrete" else [space.n])]
        split = torch.split(scores, sizes, dim=1)[element]
        rivals = torch.cat([split, torch.full_like(split[:, :1], -math.inf)], dim=1)
        best_other = torch.stack([torch.cat([rivals[:, :v], rivals[:, v + 1:]], dim=1).amax(dim=1)
                                  for v in range(split.shape[1])], dim=1)
        return split - best_other

    def _winning_rows(self, obs: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
        """For each choice, the indices of the rows of `obs` where predict() makes it (all
        actions allowed): the head's own selection, every choice from one pass."""
        with torch.no_grad():
            actions = self.head(torch.as_tensor(obs, dtype=torch.float32)).numpy()
        actions = actions.reshape(len(obs), -1)
        return {(j, v): np.flatnonzero(actions[:, j] == v) for j, v in self.choices}

    def find_each_action(self, seed: int = 0, pool: int = 4096, keep: int = 16,
                         budget: float = SEARCH_BUDGET) -> np.ndarray:
        """Observations where predict() makes each of its choices: random draws over the domain,
        then gradient ascent on the margin of every choice not found yet, all of them in one
        batch, until the ascent ends or it has taken `budget` seconds of CPU time.
        Up to `keep` rows a choice; a choice with none is one the search could not reach. How
        far it got is kept in `choice_search`."""
        if self.kind == "Box" or self.structure == "recurrent":
            return np.empty((0, self.obs_dim), dtype=np.float32)
        deadline = time.thread_time() + budget
        rng = np.random.default_rng(seed)
        rows = self._pool(rng, pool)
        wins = self._winning_rows(rows)
        missing = [choice for choice, found in wins.items() if not len(found)]
        complete = True
        if missing:
            elements = torch.tensor([j for j, _ in missing])
            values = torch.tensor([v for _, v in missing])

            def margins(x, owner):  # each row's margin for its own missing choice
                scores = self.head(x, scores=True)
                margin = torch.zeros(len(x), dtype=scores.dtype)
                for j in elements.unique().tolist():
                    mine = elements[owner] == j
                    margin = margin.masked_scatter(mine, self._margins(scores[mine], j).gather(
                        1, values[owner][mine][:, None])[:, 0])
                return margin

            ascended, complete = self._ascend(rng, margins, len(missing), deadline=deadline)
            rows = np.vstack([rows, ascended])
            wins = self._winning_rows(rows)
        self.choice_search = ChoiceSearch(sum(1 for found in wins.values() if len(found)),
                                          len(self.choices), not complete, budget)
        return np.vstack([rows[rng.permutation(wins[choice])[:keep]] for choice in self.choices])

    # --- search helpers ---------------------------------------------------------------------
    def _pool(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Random rows over the domain (half inside, a quarter beyond, a quarter far) where
        predict() can decide."""
        size = rows_for(self.obs_dim, size)
        rows = np.vstack([self.domain.inside(rng, size - 2 * (size // 4)),
                          self.domain.beyond(rng, size // 4), self.domain.far(rng, size // 4)])
        return rows[self.decidable(rows)]

    def ascent_rows(self, count: int) -> int:
        """The rows an ascent of `count` objectives moves at once: ASCENT_STARTS each, fewer for
        a large observation (the rows of a parity example) or past ASCENT_ROWS in all."""
        return count * max(1, min(ASCENT_STARTS, ASCENT_ROWS // count,
                                  example_rows(self.obs_dim, ASCENT_STARTS * count) // count))

    def _ascend(self, rng: np.random.Generator, objective, count: int,
                steps: int = ASCENT_STEPS, deadline: float | None = None
                ) -> tuple[np.ndarray, bool]:
        """Projected sign-gradient ascent of `count` objectives at once, from the rows of
        `ascent_rows` (an equal share each), within the bounds
        widened by ten widths (+-MAX_MAGNITUDE where unbounded; integers such as pixels within
        their own bounds). `objective(rows, owner)` is each row's objective (`owner`: the
        index of the objective each row ascends). The step shrinks geometrically from a quarter
        of the range to ASCENT_FINEST of it, so that the ascent crosses the range and then
        settles into small regions (steps below a unit still add up, for integer elements too:
        rows are rounded once, at the end). Stops early at `deadline` (time.thread_time()).
        Returns each row at the best value it reached, and whether every step ran."""
        widening = 10 * self.domain.width
        if self.domain.integral is not None:
            widening = np.where(self.domain.integral, 0.0, widening)
        lower = np.clip(np.where(np.isfinite(self.domain.low), self.domain.low - widening,
                                 -MAX_MAGNITUDE), -MAX_MAGNITUDE, None)
        upper = np.clip(np.where(np.isfinite(self.domain.high), self.domain.high + widening,
                                 MAX_MAGNITUDE), None, MAX_MAGNITUDE)
        lo = torch.as_tensor(lower, dtype=torch.float32)
        hi = torch.as_tensor(upper, dtype=torch.float32)
        rows = self.ascent_rows(count)
        owner = torch.arange(count).repeat_interleave(rows // count)
        x = torch.as_tensor(self.domain.beyond(rng, rows), dtype=torch.float32)
        x.requires_grad_(True)
        best = x.detach().clone()
        best_value = torch.full((len(x),), -math.inf)
        complete = True
        for k in range(steps):
            if deadline is not None and time.thread_time() >= deadline:
                complete = False
                break
            value = objective(x, owner)
            (grad,) = torch.autograd.grad(value.sum(), x)
            with torch.no_grad():
                better = value > best_value
                best[better] = x[better]
                best_value = torch.where(better, value, best_value)
                x += (hi - lo) * (0.25 * ASCENT_FINEST ** (k / (steps - 1))) * torch.sign(grad)
                x.copy_(torch.maximum(torch.minimum(x, hi), lo))
        return self.domain.finish(best.numpy()), complete
