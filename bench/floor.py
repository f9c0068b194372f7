"""The floor of a suite run on one agent: a bare process that does, once, the work the suite's
statistics claim, with none of the suite's machinery (make bench measures the suite against it).

    python bench/floor.py PPO_MODEL COUNTS [--vecnormalize PKL] [--image]
                          [--ascent ROWS STEPS] [--search-seconds S]

It imports torch, Stable-Baselines3 and ONNX Runtime; loads the agent (an RL Zoo zip saved under
gym: its spaces are rebuilt from the zip's JSON) and its VecNormalize statistics; exports
normalization (or, for images, HWC -> CHW and /255), the policy's deterministic action and the
clamp to the action bounds with torch's dynamo exporter; then, for each parity clause in COUNTS
(a JSON object: clause -> observations the suite compared), compares that many observations
from ONNX Runtime with predict() (and with a float64 forward pass, the tolerance's reference, for
rows beyond its fixed part, as the suite does);
and, for the PORT clauses' counts, runs that many of them again in ONNX Runtime without graph
optimizations and in onnx.reference. It fails (exit 1) where the artifact does not act like
predict(), so that it cannot be fast by skipping work.

The searches the suite's report claims, done bare: `--ascent ROWS STEPS`, the out-of-bound search
(a sign-gradient ascent of the pre-clip mean toward each bound, ROWS rows moved at once for STEPS
steps); `--search-seconds S`, the decision search that spent its time budget (S seconds of the
searching thread's CPU time, which on a quiet machine is about as long: here S seconds of wall
time running the artifact on drawn observations).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import pickle
import tempfile
import time
import warnings
import zipfile

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx.reference import ReferenceEvaluator
from stable_baselines3 import PPO

BATCH = 4096
SEARCH_ROWS = 64


def quiet_threads() -> ort.SessionOptions:
    """ONNX Runtime's threads not spinning between runs, as the suite's: spinning, they take a
    core from torch's predict() (a floor that paid for that would flatter the suite)."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def ascend(exported: Exported, x: torch.Tensor, steps: int, image: bool) -> None:
    """Each row pushes one action element toward one of its bounds, in turn: a sign step on the
    gradient of the pre-clip mean, shrinking from a quarter of the range to 1e-5 of it, kept
    within the range (the pixels' own for images)."""
    lo, hi = (0.0, 255.0) if image else (-110.0, 110.0)
    act = exported.low.numel()
    direction = torch.zeros(len(x), act)
    direction[torch.arange(len(x)), torch.arange(len(x)) // 2 % act] = 1.0
    direction[1::2] *= -1.0
    x.requires_grad_(True)
    for k in range(steps):
        (grad,) = torch.autograd.grad((exported.mean(x) * direction).sum(), x)
        with torch.no_grad():
            x += (hi - lo) * 0.25 * 1e-5 ** (k / max(steps - 1, 1)) * torch.sign(grad)
            x.clamp_(lo, hi)


def spaces(path: str) -> dict:
    """The zip's observation and action spaces, as gymnasium Boxes, from its JSON."""
    data = json.loads(zipfile.ZipFile(path).read("data"))

    def box(entry: dict) -> gym.spaces.Box:
        shape = tuple(entry["shape"])

        def bound(text: str) -> np.ndarray:
            values = np.array(text.replace("[", " ").replace("]", " ").split(), dtype=np.float64)
            return np.broadcast_to(values, shape) if values.size in (1, np.prod(shape)) \
                else values.reshape(shape)

        return gym.spaces.Box(bound(entry["low"]).reshape(shape),
                              bound(entry["high"]).reshape(shape), shape, entry["dtype"])

    return {"observation_space": box(data["observation_space"]),
            "action_space": box(data["action_space"])}


class GymAsGymnasium(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "gym" or module.startswith("gym."):
            module = "gymnasium" + module[3:]
        return super().find_class(module, name)


class Exported(torch.nn.Module):
    def __init__(self, policy, low, high, normalize=None, image=False):
        super().__init__()
        self.policy, self.image = policy, image
        self.register_buffer("low", torch.as_tensor(low, dtype=torch.float32))
        self.register_buffer("high", torch.as_tensor(high, dtype=torch.float32))
        self.normalize = normalize  # (mean, std, clip) or None

    def forward(self, obs):
        return torch.clamp(self.mean(obs), self.low, self.high)

    def mean(self, obs):
        if self.normalize is not None:
            mean, std, clip = self.normalize
            obs = torch.clamp((obs - mean) / std, -clip, clip)
        if self.image:
            obs = obs.permute(0, 3, 1, 2) / 255.0
        features = self.policy.pi_features_extractor(obs)
        return self.policy.action_net(self.policy.mlp_extractor.forward_actor(features))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("counts", type=json.loads)
    parser.add_argument("--vecnormalize")
    parser.add_argument("--image", action="store_true")
    parser.add_argument("--ascent", type=int, nargs=2, metavar=("ROWS", "STEPS"))
    parser.add_argument("--search-seconds", type=float, default=0.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")

    found = spaces(args.model) if not args.image else {}
    model = PPO.load(args.model, device="cpu", custom_objects={
        **found, "learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0})
    policy = model.policy.eval()
    low, high = model.action_space.low, model.action_space.high
    normalize, statistics = None, None
    if args.vecnormalize:
        with open(args.vecnormalize, "rb") as file:
            statistics = GymAsGymnasium(file).load()
        rms = statistics.obs_rms
        normalize = (torch.as_tensor(rms.mean, dtype=torch.float32),
                     torch.as_tensor(np.sqrt(rms.var + statistics.epsilon), dtype=torch.float32),
                     float(statistics.clip_obs))
    shape = model.observation_space.shape
    taken = (shape[1], shape[2], shape[0]) if args.image else shape  # images taken HWC
    path = tempfile.mktemp(suffix=".onnx")
    exported = Exported(policy, low, high, normalize, args.image).eval()
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(exported,
                          (torch.zeros(2, *taken),), path, dynamo=True, input_names=["obs"],
                          output_names=["action"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    session = ort.InferenceSession(path, quiet_threads(), providers=["CPUExecutionProvider"])
    double = copy.deepcopy(policy).double()
    rng = np.random.default_rng(0)

    def draw(n: int) -> np.ndarray:
        if args.image:
            return rng.integers(0, 256, (n, *taken), dtype=np.uint8).astype(np.float32)
        return (rng.standard_normal((n, *taken)) * 10).astype(np.float32)

    def model_input(obs: np.ndarray) -> np.ndarray:
        if args.image:
            return obs.transpose(0, 3, 1, 2).astype(np.uint8)
        if statistics is not None:
            rms = statistics.obs_rms
            return np.clip((obs - rms.mean) / np.sqrt(rms.var + statistics.epsilon),
                           -statistics.clip_obs, statistics.clip_obs).astype(np.float32)
        return obs

    def float64(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(model_input(obs), dtype=torch.float64)
            if args.image:
                x = x / 255.0
            latent = double.mlp_extractor.forward_actor(double.pi_features_extractor(x))
            return np.clip(double.action_net(latent).numpy(), low, high)

    tolerance = 1e-5 * (high - low) / 2

    def check(obs: np.ndarray, run) -> None:
        """The float64 pass only for rows beyond the tolerance's fixed part, as the suite."""
        expected, _ = model.predict(model_input(obs), deterministic=True)
        diff = np.abs(run(obs) - expected)
        suspects = np.any(diff > tolerance, axis=1)
        if suspects.any():
            bound = tolerance + 8 * np.abs(expected[suspects] - float64(obs[suspects]))
            if not np.all(diff[suspects] <= bound):
                raise SystemExit("floor: the artifact does not act like predict()")

    def ort_run(obs):
        return session.run(None, {"obs": obs})[0]

    if args.ascent:
        ascend(exported, torch.as_tensor(draw(args.ascent[0])), args.ascent[1], args.image)
    deadline = time.perf_counter() + args.search_seconds
    while time.perf_counter() < deadline:
        ort_run(draw(SEARCH_ROWS))
    parity = sum(n for clause, n in args.counts.items() if not clause.startswith("PORT"))
    for start in range(0, parity, BATCH):
        check(draw(min(BATCH, parity - start)), ort_run)
    options = quiet_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimized = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(onnx.load(path))
    engines = {"PORT-02": lambda obs: unoptimized.run(None, {"obs": obs})[0],
               "PORT-03": lambda obs: reference.run(None, {"obs": obs})[0]}
    for clause, run in engines.items():
        rows = args.counts.get(clause, 0)
        for start in range(0, rows, BATCH):
            check(draw(min(BATCH, rows - start)), run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
