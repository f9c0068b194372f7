"""Crafted model zips against the loader's budgets and checks: each ends in a one-line refusal
(or a check within the memory budget), run in a subprocess under a memory cap so that a
regression fails the test instead of exhausting the machine."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import gymnasium
import numpy as np
import pytest

from fixtures.models import SpacesEnv, box

from .conftest import CONFORMANCE, REAL_MODEL, ROOT
from .test_loading import _rewrite_zip

MEMORY_CAP = 2_500_000_000  # bytes of data segment: the suite must stay well below


def run_capped(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    def cap():
        resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run([sys.executable, "-m", "pytest", str(CONFORMANCE), "-p",
                           "no:cacheprovider", *args], cwd=ROOT, preexec_fn=cap,
                          capture_output=True, text=True, timeout=timeout)


def _policy_kwargs(kwargs):
    def edit(entries):
        data = json.loads(entries["data"])
        data["policy_kwargs"] = kwargs
        entries["data"] = json.dumps(data).encode()
    return edit


def _space_without_state(entries):
    import base64
    import pickle

    data = json.loads(entries["data"])
    data["observation_space"][":serialized:"] = base64.b64encode(
        pickle.dumps(gymnasium.spaces.Box.__new__(gymnasium.spaces.Box), protocol=3)).decode()
    entries["data"] = json.dumps(data).encode()


CRAFTED = {  # edit of the real model's zip -> what the one line says
    "net_arch of 16,000 x 16,000": (_policy_kwargs({"net_arch": [16000, 16000]}),
                                    "policy_kwargs describe a network of about"),
    "a million critics": (_policy_kwargs({"net_arch": [64, 64], "n_critics": 10**6}),
                          "policy_kwargs describe a network of about"),
    "an LSTM of 100,000 units": (_policy_kwargs({"lstm_hidden_size": 100_000}),
                                 "policy_kwargs describe a network of about"),
    "policy_kwargs a JSON list": (_policy_kwargs([64, 64]),
                                  "'policy_kwargs' is a list, not a mapping"),
    "a space without its state": (_space_without_state,
                                  "'observation_space' was unpickled without its state"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_crafted_zip_is_a_one_line_refusal(tmp_path, case):
    edit, message = CRAFTED[case]
    crafted = tmp_path / "crafted.zip"
    _rewrite_zip(REAL_MODEL, crafted, edit)
    done = run_capped("--model", str(crafted), timeout=120)
    assert done.returncode == 4, done.stdout[-2000:] + done.stderr[-2000:]
    assert message in done.stderr and "refused" in done.stderr
    assert "INTERNALERROR" not in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.slow  # eight rows of a million elements an example: `make test-slow`
def test_an_observation_at_the_size_limit_is_checked_with_fewer_rows(tmp_path):
    """A Box of 2^20 elements (the largest allowed): checked within the memory cap, with the
    rows each draw holds sized to the observation, and the counts reported."""
    from stable_baselines3 import PPO

    env = SpacesEnv(box(-1.0, 1.0, (2**20,)), box(-1.0, 1.0, (2,)))
    model = PPO("MlpPolicy", env, n_steps=8, batch_size=8, seed=0, device="cpu",
                policy_kwargs={"net_arch": [4]})
    model.save(tmp_path / "large.zip")
    del model
    done = run_capped("--model", str(tmp_path / "large.zip"), "--hypothesis-profile", "ci",
                      "-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "level: Basic PASS, Standard PASS, Extended PASS" in done.stdout
    checked = int(next(line for line in done.stdout.splitlines() if line.startswith("PAR-01:"))
                  .split()[1].replace(",", ""))
    assert 0 < checked < 1000  # fewer rows than for a small observation, and said so
