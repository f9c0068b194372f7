"""make bench: the suite's wall time and memory against baselines measured in the same run,
alternating, on this (shared, noisy) machine. Medians, and ratios of medians.

1. `--onnx` path: `pytest conformance --model M --onnx O` on the real cartpole pair, against a
   bare process that imports torch, SB3 and ONNX Runtime, loads the zip and checks the artifact
   once. Target: within 1.6x, checking at least 10,000 observations.
2. Export path: `pytest conformance --model M` (the main command), against a bare process that
   does the unavoidable work: imports, loading the zip, one export of the clamped policy with
   torch's dynamo exporter, 10,000 observations through ONNX Runtime and predict(). Target:
   within 1.3x, checking at least 10,000 observations.
3. A zoo of fixture models: `pytest conformance --model zoo/ -n 2` against the same run
   serially. Target: at most 0.7x of the serial wall time on 2 cores. Each worker pays the
   start-up a serial run pays once (importing torch and the exporter, the first export: about
   3.5 s of CPU), so two workers cannot beat about (F + W/2) / (F + W) of a serial run with
   start-up F and work W: about 0.62 for these 14 small models (about 1 s of work each). The
   bench prints beside the bound the -n 2 run's own CPU time sets (half of it, on two cores).
   Policies exported on both workers (`--dist load`) took 0.83x, oversubscribed threads more
   than 1x.
4. Images: `pytest conformance --model cnn.zip`, a PPO NatureCNN policy on 84x84x4 uint8 frames
   through the suite's own export, against its floor: bench/floor.py, a bare process that
   imports, loads the model, exports the same CNN (HWC -> CHW, /255, policy, clamp), runs the
   searches the suite ran (the out-of-bound ascent of the same rows and steps; the decision
   search's 2 s budget where the suite spent it) and compares as many frames as the suite's
   parity clauses did with predict() (and as many again as its PORT clauses ran, in ONNX Runtime
   without optimizations and onnx.reference). Target: within 1.3x, checking at least 2,000
   observations in each parity clause. The same floor without the searches (the comparisons
   alone) is measured in the same rounds and its ratio printed beside.
5. The page: the real pair's run with `--html page.html` against the same run without it.
   Target: within 1.1x (writing the page costs at most a tenth of the run).
6. The other engines: the real pair's run against the same run without the PORT clauses
   (`-k "not PORT"`). Target: within 1.15x (the PORT clauses cost at most 15% of a run).
7. A real agent: the RL Zoo's HalfCheetah-v3 PPO with its VecNormalize statistics
   (fixtures/real_models/rl-zoo), `pytest conformance --model HalfCheetah-v3.zip`, against its
   floor (bench/floor.py, as for images, normalization exported with the policy; the
   comparisons-alone ratio beside). Target: within 1.3x.
8. Peak memory (RSS) of each command, as the kernel reports it for the process and its children.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "fixtures" / "real_models" / "clankers-cartpole"
AGENT = ROOT / "fixtures" / "real_models" / "rl-zoo" / "ppo" / "HalfCheetah-v3_1"
FLOOR = ROOT / "bench" / "floor.py"
TARGETS = {"onnx": 1.6, "export": 1.3, "zoo": 0.7, "image": 1.3, "page": 1.1, "engines": 1.15,
           "agent": 1.3}
TARGET_OBSERVATIONS = 10_000
TARGET_IMAGE_OBSERVATIONS = 2_000  # in each parity clause
ZOO_SIZE = 14

LOAD_AND_CHECK = """
import sys
import numpy as np, onnxruntime as ort, torch
from stable_baselines3 import PPO
model = PPO.load(sys.argv[1], device="cpu")
session = ort.InferenceSession(sys.argv[2], providers=["CPUExecutionProvider"])
obs = np.zeros((1, 4), dtype=np.float32)
expected, _ = model.predict(obs, deterministic=True)
(obtained,) = session.run(None, {"obs": obs})
assert np.abs(expected - obtained).max() < 1e-5
"""

LOAD_EXPORT_AND_CHECK = """
import io, logging, sys, tempfile, warnings, contextlib
import numpy as np, onnxruntime as ort, torch
from stable_baselines3 import PPO
logging.disable(logging.WARNING)
warnings.simplefilter("ignore")
model = PPO.load(sys.argv[1], device="cpu")
policy = model.policy
low = torch.as_tensor(model.action_space.low)
high = torch.as_tensor(model.action_space.high)

class Clamped(torch.nn.Module):
    def forward(self, obs):
        latent = policy.mlp_extractor.forward_actor(policy.pi_features_extractor(obs))
        return torch.clamp(policy.action_net(latent), low, high)

path = tempfile.mktemp(suffix=".onnx")
with contextlib.redirect_stdout(io.StringIO()):
    torch.onnx.export(Clamped().eval(), (torch.zeros(2, 4),), path, dynamo=True,
                      input_names=["obs"], output_names=["action"],
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
obs = np.random.default_rng(0).uniform(-10, 10, (10_000, 4)).astype(np.float32)
expected, _ = model.predict(obs, deterministic=True)
(obtained,) = session.run(None, {"obs": obs})
assert np.abs(expected - obtained).max() < 1e-4
"""

# Both sides run with bytecode caching on, as on a user's machine (this sandbox sets
# PYTHONDONTWRITEBYTECODE, which makes pytest re-rewrite every plugin module on every run), and
# with torch's threads waiting passively, as the suite sets them (tuning.py): on this shared
# machine a bare process's spinning threads would make it the slower side whenever it is busy.
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
       "OMP_WAIT_POLICY": "PASSIVE"}


# Runs a command and reports, last on stderr, the largest RSS of it and its descendants (KiB)
# and the CPU time they used (user and system, seconds).
PEAK = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
        "used = resource.getrusage(resource.RUSAGE_CHILDREN); "
        "print('PEAK_KIB', used.ru_maxrss, 'CPU_S', used.ru_utime + used.ru_stime, "
        "file=sys.stderr); sys.exit(done.returncode)")


def measured(command: list[str]) -> tuple[float, float, str, float]:
    """(wall seconds, peak RSS in MiB of the command's largest process, stdout, CPU
    seconds of the command and its descendants)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK, *command], cwd=ROOT, env=ENV,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed:\n{done.stdout[-3000:]}\n"
                 f"{done.stderr[-3000:]}")
    peak, cpu = re.findall(r"PEAK_KIB (\d+) CPU_S ([\d.]+)", done.stderr)[-1]
    return elapsed, int(peak) / 1024, done.stdout, float(cpu)


def parity_counts(out: str) -> dict[str, int]:
    """Observations each parity clause (PAR, OBS) checked against predict(), from the summary."""
    return {clause: n for clause, n in claimed(out).items() if clause.startswith(("PAR", "OBS"))}


def observations(out: str) -> int:
    return sum(n for clause, n in parity_counts(out).items() if clause.startswith("PAR"))


def claimed(out: str) -> dict[str, int]:
    """Observations each clause says it compared with predict() (parity, normalization, other
    engines), from the summary: the work a floor does too."""
    return {clause: int(n.replace(",", "")) for clause, n in
            re.findall(r"^([A-Z]+-\d+): ([\d,]+) observations checked", out, re.MULTILINE)}


def against_floor(name: str, model: Path, rounds: int, *floor_args: str) -> dict:
    """The suite on `model` against bench/floor.py doing the work the suite's statistics claim
    (read from one run of the suite first, not counted): its comparisons and its searches (the
    target's baseline), and, measured in the same rounds, its comparisons alone."""
    mine = suite("--model", str(model))
    out = measured(mine)[2]
    floor = [sys.executable, str(FLOOR), str(model), json.dumps(claimed(out)), *floor_args]
    return compare(name, floor + searches(model, out), mine, rounds, also=floor)


def searches(model: Path, out: str) -> list[str]:
    """bench/floor.py's arguments for the searches the suite ran on `model`: the out-of-bound
    ascent (a Box policy's; its rows and steps), and the decision search's time budget where the
    summary says the search spent it."""
    sys.path.insert(0, str(ROOT))
    from policy_onnx.decisions import SEARCH_SECONDS
    from policy_onnx.load import load_model
    from policy_onnx.model import ASCENT_STEPS, Reference

    reference = Reference(load_model(model))
    args = ["--ascent", str(reference.ascent_rows(2 * reference.act_dim)), str(ASCENT_STEPS)] \
        if reference.clips else []
    if "the search stopped at its time budget" in out:
        args += ["--search-seconds", str(SEARCH_SECONDS)]
    return args


def suite(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
            "--hypothesis-profile", "ci", *args]


def compare(name: str, baseline: list[str], mine: list[str], rounds: int,
            also: list[str] | None = None) -> dict:
    """Alternating runs of a baseline (and of another, `also`, reported beside it) and the
    suite: medians, ratio, observations, peak RSS."""
    measured(baseline)  # warm the file cache once; not counted
    base, other, ours, cpu, checked, peak = [], [], [], [], 0, 0.0
    for _ in range(rounds):
        base.append(measured(baseline)[0])
        if also:
            other.append(measured(also)[0])
        elapsed, peak_now, out, cpu_now = measured(mine)
        ours.append(elapsed)
        cpu.append(cpu_now)
        checked = observations(out)
        peak = max(peak, peak_now)
    return {"name": name, "baseline": base, "also": other, "suite": ours, "cpu": cpu,
            "observations": checked, "per_clause": parity_counts(out),
            "ratio": statistics.median(ours) / statistics.median(base), "peak": peak}


def build_image_model(folder: Path) -> Path:
    """PPO CnnPolicy (SB3's NatureCNN, as built) on 84x84x4 uint8 frames, channel-last."""
    import gymnasium as gym
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from fixtures.models import SpacesEnv, box, image
    from stable_baselines3 import PPO

    env = SpacesEnv(image(84, 84, 4), box(-1.0, 1.0, (2,)))
    path = folder / "ppo_naturecnn_84x84x4.zip"
    PPO("CnnPolicy", env, seed=0, device="cpu").save(path)
    assert isinstance(env.observation_space, gym.spaces.Box) and np.prod(
        env.observation_space.shape) == 28_224
    return path


def build_zoo(folder: Path) -> Path:
    """ZOO_SIZE plain fixture models (no folders, no statistics) in one folder."""
    sys.path.insert(0, str(ROOT))
    from fixtures.models import FIXTURES, build

    plain = [f for f in FIXTURES if not f.normalization][:ZOO_SIZE]
    for fixture in plain:
        build(fixture, folder)
    return folder


def report(result: dict, target: float, unit: str) -> bool:
    def times(values):
        return f"median {statistics.median(values):.2f} s [{', '.join(f'{t:.2f}' for t in values)}]"

    print(f"{result['name']}:")
    print(f"  baseline: {times(result['baseline'])}")
    if result["also"]:
        print(f"  the comparisons alone (no searches): {times(result['also'])}; the suite "
              f"{statistics.median(result['suite']) / statistics.median(result['also']):.2f}x")
    print(f"  suite:    {times(result['suite'])}")
    if unit == "cores":
        least = statistics.median(result["cpu"]) / 2
        print(f"  its CPU time {2 * least:.2f} s (median): two cores need at least {least:.2f} "
              f"s, {least / statistics.median(result['baseline']):.2f}x the serial run")
    met = result["ratio"] <= target
    extra = ""
    if unit == "observations":
        met = met and result["observations"] >= TARGET_OBSERVATIONS
        extra = (f"; observations checked against predict(): {result['observations']:,} "
                 f"(target >= {TARGET_OBSERVATIONS:,})")
    elif unit == "image observations":
        counts = result["per_clause"]
        met = met and bool(counts) and min(counts.values()) >= TARGET_IMAGE_OBSERVATIONS
        extra = (f"; observations per parity clause: "
                 f"{', '.join(f'{c} {n:,}' for c, n in sorted(counts.items()))} (target >= "
                 f"{TARGET_IMAGE_OBSERVATIONS:,} each)")
    print(f"  ratio {result['ratio']:.2f}x (target <= {target}x){extra}; peak RSS "
          f"{result['peak']:.0f} MiB -> {'met' if met else 'MISSED'}")
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each (default: 3)")
    parser.add_argument("--model", type=Path, default=REAL / "cartpole_ppo_model.zip")
    parser.add_argument("--onnx", type=Path, default=REAL / "cartpole_ppo.onnx")
    parser.add_argument("--skip-zoo", action="store_true", help="leave out the zoo (slow)")
    args = parser.parse_args()
    model, onnx = str(args.model), str(args.onnx)
    with tempfile.TemporaryDirectory() as tmp:
        image = against_floor("images: PPO NatureCNN 84x84x4 (pytest conformance --model "
                              "cnn.zip) against a bare process comparing the same frames",
                              build_image_model(Path(tmp)), args.rounds, "--image")
    results = [
        (against_floor("a real agent: RL Zoo HalfCheetah-v3 PPO with VecNormalize (pytest "
                       "conformance --model HalfCheetah-v3.zip) against a bare process doing "
                       "the same claimed work", AGENT / "HalfCheetah-v3.zip", args.rounds,
                       "--vecnormalize", str(AGENT / "HalfCheetah-v3" / "vecnormalize.pkl")),
         TARGETS["agent"], "wall"),
        (compare("--onnx path (pytest conformance --model M --onnx O)",
                 [sys.executable, "-c", LOAD_AND_CHECK, model, onnx],
                 suite("--model", model, "--onnx", onnx), args.rounds),
         TARGETS["onnx"], "observations"),
        (image, TARGETS["image"], "image observations"),
        (compare("the page (--model M --onnx O --html page.html) against the same run "
                 "without it", suite("--model", model, "--onnx", onnx),
                 suite("--model", model, "--onnx", onnx, "--html",
                       str(Path(tempfile.gettempdir()) / "policy-onnx-bench-page.html")),
                 args.rounds), TARGETS["page"], "wall"),
        # --level basic: without PORT-02 (Standard) the run does not meet Standard
        (compare("the other engines (PORT clauses) against the same run without them "
                 "(-k 'not PORT')",
                 suite("--model", model, "--onnx", onnx, "--level", "basic", "-k", "not PORT"),
                 suite("--model", model, "--onnx", onnx, "--level", "basic"), args.rounds),
         TARGETS["engines"], "wall"),
        (compare("export path (pytest conformance --model M)",
                 [sys.executable, "-c", LOAD_EXPORT_AND_CHECK, model],
                 suite("--model", model), args.rounds), TARGETS["export"], "observations"),
    ]
    if not args.skip_zoo:
        with tempfile.TemporaryDirectory() as tmp:
            zoo = str(build_zoo(Path(tmp)))
            results.append((compare(f"a zoo of {ZOO_SIZE} fixture models: -n 2 against serial",
                                    suite("--model", zoo), suite("--model", zoo, "-n", "2"),
                                    args.rounds), TARGETS["zoo"], "cores"))
    met = [report(*result) for result in results]
    print("all targets met" if all(met) else "TARGET MISSED")
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
