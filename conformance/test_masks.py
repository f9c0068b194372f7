"""MASK clauses (Extended): policies with action masks (MaskablePPO)."""

from policy_onnx.check import clause_test, fail
from policy_onnx.parity import check_parity
from policy_onnx.strategies import EVERYWHERE, batches


@clause_test("MASK-01")
def test_mask_input(clause, policy, artifact):
    names = [t.name for t in artifact.inputs]
    if sorted(names) != ["action_masks", "obs"]:
        fail(clause, f"required inputs are {names}, but must be exactly obs and action_masks")
    masks = artifact.masks
    problems = []
    if masks.type_name != "BOOL":
        problems.append(f"action_masks is {masks.type_name}, must be BOOL")
    if len(masks.dims) != 2 or not isinstance(masks.dims[0], str):
        problems.append(f"action_masks is {list(masks.dims)}, must be [batch, m] with a "
                        "symbolic batch")
    elif policy.reference is not None and masks.dims[1] != policy.reference.head.mask_width:
        problems.append(f"action_masks has {masks.dims[1]} choices, the model's action space "
                        f"{policy.reference.action_space} has {policy.reference.head.mask_width}")
    elif not isinstance(masks.dims[1], int):
        problems.append(f"action_masks dimension 1 is {masks.dims[1]!r}, must be static")
    if problems:
        fail(clause, "; ".join(problems))


@clause_test("MASK-02")
def test_masked_parity(clause, policy, reference, artifact, action_seeds, decisions):
    strategy = batches(reference.domain, (*EVERYWHERE, "each_action"), action_seeds,
                       mask_space=reference.mask_space)
    check_parity(clause, reference, artifact, strategy, policy, decisions=decisions,
                 search=reference.choice_search)
