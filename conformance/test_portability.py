"""PORT clauses: the artifact acts the same in other engines than the ONNX Runtime session the
other clauses run (engines.py)."""

import pytest

from policy_onnx import engines
from policy_onnx.check import clause_test, require
from policy_onnx.parity import check_engine_parity, check_runtimes


@clause_test("PORT-01")
def test_standard_operators(clause, artifact):
    require(clause, engines.operator_problems(artifact.proto))


@clause_test("PORT-02")
def test_unoptimized_parity(clause, policy, reference, artifact, decisions):
    check_engine_parity(clause, reference, artifact, policy, engines.ORT_UNOPTIMIZED,
                        tuple(decisions.batch_sizes[:4]))


@clause_test("PORT-03")
def test_reference_parity(clause, policy, reference, artifact, decisions):
    check_engine_parity(clause, reference, artifact, policy, engines.REFERENCE,
                        tuple(decisions.batch_sizes[:4]))


@clause_test("PORT-04")
def test_runtimes(clause, policy, reference, artifact, runtimes, decisions):
    if not runtimes:
        pytest.skip(f"{clause.id} not applicable: no runtime named (--runtime tract,openvino "
                    "checks those engines)")
    check_runtimes(clause, reference, artifact, policy, runtimes,
                   tuple(decisions.batch_sizes[:4]))
