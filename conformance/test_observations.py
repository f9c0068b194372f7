"""OBS clauses (Extended): image and dict observations, fed as the environment returns them."""

from policy_onnx import metadata
from policy_onnx.check import clause_test, fail, require
from policy_onnx.observations import IMAGE_LAYOUTS, ObservationLayout
from policy_onnx.parity import check_parity
from policy_onnx.strategies import batches


def _declared(clause, artifact) -> dict:
    """The parsed `observation_space` entry; the clause fails when there is none."""
    problems = metadata.key_problems(metadata.OBSERVATION_KEY, artifact)
    if problems:
        fail(clause, "; ".join(problems))
    return metadata.parse_observation_space(artifact.metadata[metadata.OBSERVATION_KEY][0])


@clause_test("OBS-01")
def test_observation_space(clause, artifact):
    declared = _declared(clause, artifact)
    size = metadata.observation_size(declared)
    if artifact.obs_dim is not None and size != artifact.obs_dim:
        fail(clause, f"observation_space flattens to {size} elements "
                     f"(gymnasium.spaces.flatdim), but obs_dim is {artifact.obs_dim}")


@clause_test("OBS-02")
def test_observation_space_matches_model(clause, artifact, reference):
    declared = _declared(clause, artifact)
    space = reference.observation_space
    layouts = IMAGE_LAYOUTS if reference.layout.images else IMAGE_LAYOUTS[:1]
    tries = [metadata.observation_differences(
        declared, ObservationLayout(space, layout).describe()) for layout in layouts]
    if not all(tries):
        return
    declared_layout = metadata.image_layout(declared)
    require(clause, tries[IMAGE_LAYOUTS.index(declared_layout) if declared_layout else 0])


@clause_test("OBS-03")
def test_observation_parity(clause, policy, reference, artifact, decisions):
    # Pictures, and observations near those the searches found: each discrete choice, or a
    # mean beyond the action bounds.
    seeds = policy.clip_seeds if reference.kind == "Box" else policy.action_seeds
    regimes = ("structured", "toward_clip" if reference.kind == "Box" else "each_action")
    strategy = batches(reference.domain, regimes, seeds, mask_space=reference.mask_space)
    check_parity(clause, reference, artifact, strategy, policy, decisions=decisions,
                 search=reference.choice_search)
