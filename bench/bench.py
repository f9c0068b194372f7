"""make bench: wall time of the full conformance run on the real cartpole pair, against a baseline
measured in the same run, alternating, on this (shared, noisy) machine.

Baseline: a bare process that imports torch, SB3 and onnxruntime, loads the zip and checks the
same artifact once (one observation through predict() and ONNX Runtime). Suite: `pytest
conformance --model ZIP --onnx ONNX --hypothesis-profile ci`. Target: the suite's median within
1.6x of the baseline's median while checking at least 10,000 observations.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL = ROOT / "fixtures" / "real_models" / "clankers-cartpole"
TARGET_RATIO = 1.6
TARGET_OBSERVATIONS = 10_000

BASELINE = """
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


# Both sides run with bytecode caching on, as on a user's machine (this sandbox sets
# PYTHONDONTWRITEBYTECODE, which makes pytest re-rewrite every plugin module on every run).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench: {' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
    return elapsed, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="runs of each (default: 5)")
    parser.add_argument("--model", type=Path, default=REAL / "cartpole_ppo_model.zip")
    parser.add_argument("--onnx", type=Path, default=REAL / "cartpole_ppo.onnx")
    args = parser.parse_args()
    baseline_cmd = [sys.executable, "-c", BASELINE, str(args.model), str(args.onnx)]
    suite_cmd = [sys.executable, "-m", "pytest", "conformance", "-q", "-p", "no:cacheprovider",
                 "--model", str(args.model), "--onnx", str(args.onnx), "--hypothesis-profile",
                 "ci"]
    timed(baseline_cmd)  # warm the file cache once; not counted
    baseline, suite, observations = [], [], 0
    for _ in range(args.rounds):
        baseline.append(timed(baseline_cmd)[0])
        elapsed, out = timed(suite_cmd)
        suite.append(elapsed)
        observations = sum(int(n.replace(",", "")) for n in
                           re.findall(r"^PAR-\d+: ([\d,]+) observations", out, re.MULTILINE))
    base, mine = statistics.median(baseline), statistics.median(suite)
    ratio = mine / base
    print(f"baseline (import + load + one check): median {base:.2f} s "
          f"[{', '.join(f'{t:.2f}' for t in baseline)}]")
    print(f"conformance suite (all clauses):      median {mine:.2f} s "
          f"[{', '.join(f'{t:.2f}' for t in suite)}]")
    print(f"ratio {ratio:.2f}x (target <= {TARGET_RATIO}x); observations checked against "
          f"predict(): {observations:,} (target >= {TARGET_OBSERVATIONS:,})")
    met = ratio <= TARGET_RATIO and observations >= TARGET_OBSERVATIONS
    print("target met" if met else "TARGET MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
