"""NORM clauses (Extended): models trained under observation normalization (VecNormalize),
checked in raw units."""

import pytest

from policy_onnx.check import clause_test
from policy_onnx.parity import check_parity
from policy_onnx.strategies import batches

REGIME = {"NORM-01": "normalized_range", "NORM-02": "normalized_clip"}


@clause_test(*REGIME)
def test_normalized_parity(clause, policy, reference, artifact, decisions):
    normalization = reference.normalization
    never = clause.id == "NORM-02" and normalization.never_clips(*reference.domain.feedable())
    if never:
        pytest.skip(f"{clause.id} not applicable: VecNormalize clips no observation of this "
                    f"model ({never}; {normalization.path})")
    strategy = batches(reference.domain, (REGIME[clause.id],), mask_space=reference.mask_space)
    # NORM-02 draws at the clip only
    check_parity(clause, reference, artifact, strategy, policy,
                 decisions=decisions if clause.id == "NORM-01" else None)
