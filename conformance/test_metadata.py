"""META clauses: the nine metadata entries."""

import numpy as np

from policy_onnx import metadata, spec
from policy_onnx.check import clause_test, fail, require

KEY_CLAUSES = [c.id for c in spec.CLAUSES if c.slug in metadata.KEYS]


@clause_test(*KEY_CLAUSES)
def test_metadata_entry(clause, artifact):
    require(clause, metadata.key_problems(clause.slug, artifact))


@clause_test("META-03")
def test_action_space_matches_model(clause, artifact, reference):
    if reference.kind != "Box":
        expected = metadata.describe_space(reference.action_space)
        values = artifact.metadata.get("action_space", [])
        try:
            declared = metadata.parse_discrete(values[0]) if values else None
        except ValueError:
            declared = None
        if declared is None:
            fail(clause, "action_space is missing or malformed (see DISC-03)")
        if {k: declared.get(k) for k in expected} != expected:
            fail(clause, f"declares {values[0]}, the model's action space is {expected}")
        return
    declared = artifact.declared_box()
    if declared is None:
        fail(clause, "action_space is missing or malformed (see META-02)")
    space = reference.action_space
    if declared.shape != tuple(space.shape):
        fail(clause, f"declares shape {list(declared.shape)}, the model's {space} has shape "
                     f"{list(space.shape)}")
    problems = []
    for name, got, want in (("low", declared.low, reference.low),
                            ("high", declared.high, reference.high)):
        if not np.array_equal(np.float32(got), np.float32(want)):
            problems.append(f"{name} is {np.float32(got).tolist()}, the model's is "
                            f"{np.float32(want).tolist()}")
    require(clause, problems)
