"""PAR clauses: the final action matches model.predict(obs, deterministic=True)."""

import pytest

from policy_onnx.check import clause_test
from policy_onnx.parity import check_parity
from policy_onnx.strategies import REGIMES, batches


@clause_test("PAR-01")
def test_parity(clause, policy, reference, artifact, clip_seeds, decisions):
    strategy = batches(reference.domain, REGIMES, clip_seeds)
    check_parity(clause, reference, artifact, strategy, policy, decisions=decisions)


@clause_test("PAR-02")
def test_parity_out_of_bounds(clause, policy, reference, artifact, clip_seeds, decisions):
    if not reference.clips:
        pytest.skip(f"{clause.id} not applicable: this policy squashes its mean with tanh "
                    "(squash_output), so predict() never clips it")
    if len(clip_seeds) == 0:
        pytest.skip(f"{clause.id} not applicable: the model cannot produce a mean outside the "
                    "action bounds anywhere the suite searched (random draws inside the "
                    "observation bounds, beyond them and at magnitudes up to float32's largest, "
                    "then gradient ascent on each action element)")
    strategy = batches(reference.domain, ("toward_clip",), clip_seeds)
    check_parity(clause, reference, artifact, strategy, policy, steer=True,
                 decisions=decisions, rows=clip_seeds)
