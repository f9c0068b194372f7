"""The clause registry of POLICY_ONNX_SPEC: the single source of every clause.

The spec document's clause tables (POLICY_ONNX_SPEC.md), the parametrization of the clause tests
in conformance/ and the sync gate of the self-tests all read CLAUSES.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

SPEC_VERSION = "1.2.0"  # the document's own version (its section 8 lists the changes)


class Level(enum.IntEnum):
    BASIC = 1
    STANDARD = 2
    EXTENDED = 3

    @property
    def label(self) -> str:
        return self.name.capitalize()


BOX = ("Box",)
DISCRETE = ("Discrete", "MultiDiscrete", "MultiBinary")
ACTION_KINDS = BOX + DISCRETE
# How a policy is called: obs alone; obs and action masks; obs and recurrent state.
STRUCTURES = ("plain", "masked", "recurrent")


@dataclass(frozen=True)
class Clause:
    id: str
    slug: str
    level: Level
    title: str
    text: str
    needs_model: bool = False
    kinds: tuple[str, ...] = ACTION_KINDS  # the action spaces the clause applies to
    structures: tuple[str, ...] = STRUCTURES  # the policy structures the clause applies to
    needs_normalization: bool = False  # applies only to models trained under VecNormalize
    # Applies only to observations with one of these features ("image", "dict"); () to all.
    observations: tuple[str, ...] = ()
    # About engines other than the ONNX Runtime session the other clauses run (PORT): at its
    # own level for every policy, never raised to Standard with the extension clauses.
    portability: bool = False

    def applies(self, kind: str, structure: str, features: frozenset[str] | None = None
                ) -> bool:
        """Does the clause concern a policy of this action kind and structure (and, when
        `features` is given, with an observation of these features: "image", "dict")?"""
        return (kind in self.kinds and structure in self.structures
                and (features is None or not self.observations
                     or bool(features & set(self.observations))))

    @property
    def test_id(self) -> str:
        """The id a clause test carries, e.g. ``META-04-action_transform``."""
        return f"{self.id}-{self.slug}"

    def __str__(self) -> str:
        return self.test_id


B, S, E = Level.BASIC, Level.STANDARD, Level.EXTENDED

CLAUSES: tuple[Clause, ...] = (
    # --- the graph -----------------------------------------------------------------------------
    Clause("GRAPH-01", "onnx_checker", B, "The file is a valid ONNX model",
           "The artifact MUST be a single self-contained ONNX file (no tensor data in external "
           "files: runtimes load artifacts from bytes, and the reported SHA-256 covers the whole "
           "policy) that passes `onnx.checker.check_model` with `full_check=True` (which "
           "includes shape inference)."),
    Clause("GRAPH-02", "runtime_loads", B, "ONNX Runtime loads the artifact on the CPU",
           "ONNX Runtime MUST create an inference session from the artifact with the CPU "
           "execution provider."),
    Clause("GRAPH-03", "input_name", B, "The one required input is named `obs`",
           "A vector policy without action masks or recurrent state MUST have exactly one "
           "required graph input (initializers do not count), and it MUST be named `obs`.",
           structures=("plain",)),
    Clause("GRAPH-04", "output_name", B, "The one output is named `action`",
           "A feed-forward vector policy MUST have exactly one graph output, named `action`.",
           structures=("plain", "masked")),
    Clause("GRAPH-05", "input_dtype", B, "The input `obs` is float32",
           "The element type of `obs` MUST be float32."),
    Clause("GRAPH-06", "output_dtype", B, "The output `action` is float32",
           "The element type of `action` MUST be float32.", kinds=BOX),
    Clause("GRAPH-07", "input_shape", B, "`obs` is `[batch, obs_dim]` with a static `obs_dim`",
           "`obs` MUST have rank 2, and dimension 1 (`obs_dim`) MUST be a static positive "
           "integer."),
    Clause("GRAPH-08", "output_shape", B, "`action` is `[batch, act_dim]` with a static `act_dim`",
           "`action` MUST have rank 2, and dimension 1 (`act_dim`) MUST be a static positive "
           "integer.", kinds=BOX),
    Clause("GRAPH-09", "input_batch_dynamic", B, "The batch dimension of `obs` is symbolic",
           "Dimension 0 of `obs` MUST be symbolic (a `dim_param`), not a fixed size. Its name "
           "SHOULD be `batch`."),
    Clause("GRAPH-10", "output_batch_dynamic", B, "The batch dimension of `action` is symbolic",
           "Dimension 0 of `action` MUST be symbolic (a `dim_param`), not a fixed size. Its name "
           "SHOULD be `batch`."),
    Clause("GRAPH-11", "obs_dim_matches_model", B,
           "`obs_dim` is the flattened size of the model's observation space",
           "`obs_dim` MUST equal the flat size of one observation of the SB3 model's "
           "observation space (`gymnasium.spaces.flatdim`: its number of elements for a Box; "
           "OBS-03 says how images and dicts are fed); observations are fed flattened in C "
           "order.", needs_model=True),
    Clause("GRAPH-12", "act_dim_matches_model", B,
           "`act_dim` is the flattened size of the model's action space",
           "`act_dim` (the number of output elements per row: 1 for a `[batch]` output) MUST "
           "equal the number of elements of one action of the SB3 model's action space.",
           needs_model=True),
    # --- the metadata ----------------------------------------------------------------------------
    Clause("META-01", "clanker_policy_version", B, "`clanker_policy_version` is a 1.x version",
           "The key `clanker_policy_version` MUST be present exactly once, and its value MUST be a "
           "semantic version `MAJOR.MINOR.PATCH` whose major is 1."),
    Clause("META-02", "action_space", B, "`action_space` describes the output",
           "The key `action_space` MUST be present exactly once; its value MUST be a JSON object "
           "with `type` \"Box\", `shape` (a list of positive integers whose product is "
           "`act_dim`), `dtype` \"float32\", and `low` and `high`: lists of `act_dim` finite "
           "numbers with low <= high element-wise.", kinds=BOX),
    Clause("META-03", "action_space_matches_model", B,
           "`action_space` is the model's action space",
           "The declared `action_space` MUST equal the SB3 model's action space: the same type "
           "and shape, and `low`/`high` equal to the model's bounds in float32 (Box), the same "
           "`n` and `start` (Discrete), `nvec` (MultiDiscrete) or `n` (MultiBinary).",
           needs_model=True),
    Clause("META-04", "action_transform", B, "`action_transform` is none, clip or tanh",
           "The key `action_transform` MUST be present exactly once, with one of the values "
           "`none`, `clip`, `tanh`. The final action is `action` as output (`none`), "
           "`clip(action, low, high)` with the declared bounds (`clip`), or "
           "`action * action_scale + action_offset` (`tanh`)."),
    Clause("META-05", "action_scale", S, "`action_scale` is a list of `act_dim` numbers",
           "The key `action_scale` MUST be present exactly once; its value MUST be a JSON array of "
           "`act_dim` finite numbers."),
    Clause("META-06", "action_offset", S, "`action_offset` is a list of `act_dim` numbers",
           "The key `action_offset` MUST be present exactly once; its value MUST be a JSON array "
           "of `act_dim` finite numbers."),
    Clause("META-07", "training_framework", S, "`training_framework` is stable-baselines3",
           "The key `training_framework` MUST be present exactly once, with the value "
           "`stable-baselines3`."),
    Clause("META-08", "recurrent", S, "`recurrent` agrees with the graph",
           "The key `recurrent` MUST be present exactly once, with the value \"true\" or "
           "\"false\"; it MUST be \"true\" exactly when the graph carries recurrent state (a "
           "feed-forward policy says \"false\")."),
    Clause("META-09", "deterministic_mode", S, "`deterministic_mode` is a string boolean",
           "The key `deterministic_mode` MUST be present exactly once, with the value \"true\" or "
           "\"false\". It is not read as a claim about the graph."),
    Clause("META-10", "batch_inference", S, "`batch_inference` agrees with the graph",
           "The key `batch_inference` MUST be present exactly once, with the value \"true\" or "
           "\"false\"; it MUST be \"true\" exactly when the batch dimension of `obs` is "
           "symbolic."),
    # --- behaviour -------------------------------------------------------------------------------
    Clause("BEH-01", "batch_sizes", S, "N observations give N actions",
           "For every batch size N from 1 to 64, the powers of two from 128 to 4096 and their "
           "neighbours, 100 and 1000, `action` MUST have N rows, each of the output's declared "
           "static shape."),
    Clause("BEH-02", "rows_independent", S, "Each row of a batch is computed on its own",
           "For every batch size of BEH-01, row i of the output for a batch MUST equal the "
           "output for row i fed alone, within the parity tolerance (a discrete choice "
           "exactly, but at a rounding tie, where batched kernels may round otherwise than a "
           "row alone: with a model, where `predict()`'s own choice is a tie by the rule of "
           "section 6; without one, where an `ArgMax`, `ArgMin` or `TopK` of the graph finds "
           "its two best inputs within `1e-5` of their magnitude)."),
    Clause("BEH-03", "repeatable", S, "The same input gives the same output",
           "Running the same batch twice MUST give bit-identical outputs, and the graph MUST "
           "NOT contain a random-number operator (`RandomUniform`, `RandomNormal`, their `Like` "
           "forms, `Multinomial`, `Bernoulli`), in any subgraph either: a seeded generator "
           "advances with every run, so the output would depend on how many runs came before."),
    Clause("BEH-04", "finite", S, "A finite observation gives a finite action",
           "For every finite observation the suite draws, every element of the final action MUST "
           "be finite."),
    Clause("BEH-05", "within_bounds", S, "The final action lies inside the declared bounds",
           "Every element of the final action MUST lie in the declared `[low, high]` of "
           "`action_space`, within the parity tolerance.", kinds=BOX),
    # --- parity ----------------------------------------------------------------------------------
    Clause("PAR-01", "parity", S, "The final action matches `predict()`",
           "For every observation the suite draws from the model's observation space (inside its "
           "bounds and beyond them), the final action MUST match "
           "`model.predict(obs, deterministic=True)` within the parity tolerance.",
           needs_model=True, kinds=BOX, structures=("plain",)),
    Clause("PAR-02", "parity_out_of_bounds", S,
           "The final action matches `predict()` where the mean leaves the bounds",
           "For observations whose pre-clip mean lies outside the action bounds, the final action "
           "MUST match `model.predict(obs, deterministic=True)` (which clips) within the parity "
           "tolerance. The suite MUST exercise such observations, or state that the model cannot "
           "produce any (then the clause is not applicable and is reported as skipped).",
           needs_model=True, kinds=BOX, structures=("plain",)),
    # --- discrete actions (Extended) -------------------------------------------------------------
    Clause("DISC-01", "discrete_output_dtype", E, "`action` has the dtype predict() returns",
           "For a Discrete or MultiDiscrete action space `action` MUST be int64; for "
           "MultiBinary it MUST be float32 (0.0 or 1.0), as `predict()` returns them.",
           kinds=DISCRETE),
    Clause("DISC-02", "discrete_output_shape", E, "`action` has the shape predict() returns",
           "`action` MUST be `[batch]` for Discrete, `[batch, k]` with k = len(nvec) for "
           "MultiDiscrete and `[batch, n]` for MultiBinary, with k and n static.",
           kinds=DISCRETE),
    Clause("DISC-03", "discrete_action_space", E, "`action_space` describes the discrete output",
           "The key `action_space` MUST be present exactly once, a JSON object: "
           "`{\"type\": \"Discrete\", \"n\": n, \"start\": 0}`, "
           "`{\"type\": \"MultiDiscrete\", \"nvec\": [...]}` or "
           "`{\"type\": \"MultiBinary\", \"n\": n}` with positive integers, agreeing with the "
           "output's shape; `action_transform` MUST be `none`.", kinds=DISCRETE),
    Clause("DISC-04", "discrete_valid_actions", E, "Every action is a member of the space",
           "For every observation the suite draws, each action element MUST be an integer in "
           "`[start, start + n)` (Discrete), in `[0, nvec[i])` (MultiDiscrete) or 0 or 1 "
           "(MultiBinary).", kinds=DISCRETE),
    Clause("DISC-05", "discrete_parity", E, "The action equals `predict()` but at near-ties",
           "For every observation the suite draws — including, for every action `predict()` "
           "can return, observations where it returns that action, as far as the suite's "
           "search finds them — the action MUST equal "
           "`model.predict(obs, deterministic=True)` exactly, except where the model's own "
           "scores (Q-values, logits) of the two actions differ by no more than the parity "
           "tolerance: such near-ties are rounding, counted and reported, not defects.",
           needs_model=True, kinds=DISCRETE, structures=("plain", "masked")),
    # --- action masks (Extended) -----------------------------------------------------------------
    Clause("MASK-01", "mask_input", E, "Masks come in through `action_masks`",
           "A policy with action masks (MaskablePPO) MUST have exactly two required inputs, `obs` "
           "and `action_masks`: bool `[batch, m]` with a symbolic batch and m, static, the number "
           "of choices (n for Discrete, sum(nvec) for MultiDiscrete). True allows a choice.",
           kinds=("Discrete", "MultiDiscrete"), structures=("masked",)),
    Clause("MASK-02", "masked_parity", E, "The masked action equals `predict()` but at near-ties",
           "For every observation and mask the suite draws (all allowed, all masked, mixed, one "
           "choice allowed, all but one, two to four allowed, a block of consecutive choices, "
           "all but `predict()`'s unmasked choice), the action MUST equal `model.predict(obs, action_masks=mask, "
           "deterministic=True)`, except at a rounding tie of the masked scores.",
           needs_model=True, kinds=("Discrete", "MultiDiscrete"), structures=("masked",)),
    # --- observation normalization (Extended) ----------------------------------------------------
    Clause("NORM-01", "normalized_parity", E,
           "The artifact takes raw observations and normalizes them like VecNormalize",
           "For a model trained under observation normalization (VecNormalize statistics with "
           "`norm_obs`), the artifact MUST take raw observations, as a runtime reads them, and "
           "normalize them itself. For raw observations drawn across the normalized range "
           "(|(obs - mean) / sqrt(var + epsilon)| < clip_obs; < 10 where VecNormalize clips no "
           "observation, as with clip_obs = inf), the final action MUST match "
           "`model.predict(normalize(obs), deterministic=True)`, where normalize is "
           "`clip((obs - mean) / sqrt(var + epsilon), -clip_obs, clip_obs)` computed as "
           "VecNormalize computes it (float64, then float32; no clip for clip_obs = inf): "
           "within the parity tolerance for Box actions, exactly (but at rounding ties) for "
           "discrete ones.",
           needs_model=True, structures=("plain", "masked"), needs_normalization=True),
    Clause("NORM-02", "normalized_clip_parity", E,
           "The final action matches `predict()` where the normalized observation is clipped",
           "For raw observations whose normalized observation reaches +-clip_obs in some "
           "component (the suite draws there on purpose, up to three times beyond the clip), "
           "the final action MUST match `model.predict(normalize(obs), deterministic=True)` as "
           "in NORM-01. The suite reports how many such observations it checked. Where "
           "VecNormalize clips no observation a runtime can feed (clip_obs = inf, or a clip "
           "beyond every normalized value of the space), the clause is not applicable and is "
           "reported as skipped.",
           needs_model=True, structures=("plain", "masked"), needs_normalization=True),
    # --- recurrent state (Extended) --------------------------------------------------------------
    Clause("REC-01", "recurrent_interface", E, "State comes in and goes out by name",
           "A recurrent policy (RecurrentPPO) MUST have exactly the required inputs `obs`, "
           "`state_h`, `state_c` (float32 `[layers, batch, hidden]`, static layers and hidden, "
           "symbolic batch) and `episode_start` (float32 `[batch]`, 1.0 at the first step of an "
           "episode), and exactly the outputs `action`, `next_state_h` and `next_state_c`, the "
           "state outputs shaped like the state inputs.", structures=("recurrent",)),
    Clause("REC-02", "recurrent_parity", E, "Rollouts act like `predict()` step by step",
           "Over rollouts of drawn observations — of drawn length (8 to 64 steps), from a zero "
           "state or from the state `predict()` reaches after drawn warm-up steps, with drawn "
           "episode-start rates — the action at every step MUST match `model.predict(obs, "
           "state, episode_start, deterministic=True)` (within the parity tolerance for Box "
           "actions; exactly, except at rounding ties, for discrete ones) both when the "
           "artifact carries its own returned state and when it is fed `predict()`'s state; "
           "and fed `predict()`'s state, `next_state_h` and `next_state_c` MUST match the state "
           "`predict()` returns, element by element within the parity tolerance of the "
           "element's magnitude plus the state's float32 noise.",
           needs_model=True, structures=("recurrent",)),
    Clause("REC-03", "episode_start_resets", E, "`episode_start` zeroes the state",
           "For every drawn observation and any state, the outputs with `episode_start` = 1 MUST "
           "equal the outputs with a zero state and `episode_start` = 0.",
           structures=("recurrent",)),
    # --- image and dict observations (Extended) ----------------------------------------------
    Clause("OBS-01", "observation_space", E,
           "`observation_space` describes the observation the artifact takes",
           "A policy whose observation is an image or a Dict MUST carry the metadata key "
           "`observation_space` exactly once: a JSON object describing the observation as the "
           "environment returns it (grammar: `observation_space` in the metadata schema). A Box "
           "has `shape`, `dtype`, `low` and `high` (one number for every element or a flat list "
           "of one per element, null where unbounded) and, exactly when it is an image (uint8, "
           "rank 3, bounds 0 and 255), `layout`: `HWC` or `CHW`, the same for every image. A "
           "Dict has `spaces`: its entries as `{\"key\": ..., \"space\": ...}` in the order "
           "they are concatenated, each a Box or a Discrete, MultiDiscrete or MultiBinary space "
           "written as in `action_space`. Its flat size (`gymnasium.spaces.flatdim`) MUST equal "
           "`obs_dim`.", observations=("image", "dict")),
    Clause("OBS-02", "observation_space_matches_model", E,
           "`observation_space` is the model's observation space",
           "The declared observation space MUST be the SB3 model's: the same entries, a Dict's "
           "in the model's key order, each of the same type, shape, dtype, bounds (as float32), "
           "`n`, `start` and `nvec`. An image, which SB3 saves channel-first, MAY be declared "
           "in either layout: `HWC` (height, width, channels: what environments usually return, "
           "and what SB3's VecTransposeImage transposed) or `CHW` (an environment that returns "
           "channels first).", needs_model=True, observations=("image", "dict")),
    Clause("OBS-03", "observation_parity", E,
           "The artifact takes the observation as the environment returns it, flattened",
           "`obs` MUST be `gymnasium.spaces.flatten(observation_space, observation)` as "
           "float32, for the declared `observation_space`: an image as its raw pixel values "
           "(0 to 255) in its declared layout, flattened in C order; a Dict as its entries in "
           "the declared order, a Box entry flattened, a Discrete entry one-hot, a "
           "MultiDiscrete entry as its concatenated one-hots, a MultiBinary entry as its 0 and "
           "1 values. The artifact MUST do the rest of SB3's preprocessing itself: transpose "
           "images to channel-first, divide them by 255 when the policy normalizes images, "
           "split the entries. For observations drawn from each entry's own space — images as "
           "noise, flat frames, all black, all white, natural pictures (flat patches, an edge, "
           "a gradient, shapes; stacked frames moving) and frames that differ from the previous "
           "one in one channel, one pixel or a shift; discrete entries also at their corners — "
           "and near those where the suite's searches find "
           "`predict()` making each of its discrete choices or leaving the action bounds, the "
           "final action MUST match "
           "`model.predict(observation, deterministic=True)` as in PAR-01 (Box actions) or "
           "DISC-05 (discrete actions).", needs_model=True, structures=("plain", "masked"),
           observations=("image", "dict")),
    # --- other engines (PORT) -----------------------------------------------------------------
    Clause("PORT-01", "standard_operators", E,
           "The graph uses standard operators at the opset it declares",
           "Every node of the graph (and of the bodies of its If, Loop and Scan nodes, and of "
           "the functions the model defines, for each call of one) MUST be an operator of the "
           "default ONNX domain that exists at the version of that domain the model imports: "
           "no operator of another domain (ONNX Runtime's `com.microsoft` contrib operators "
           "included), none newer than the declared opset.", portability=True),
    Clause("PORT-02", "unoptimized_parity", S,
           "ONNX Runtime without graph optimizations acts like `predict()`",
           "Run by ONNX Runtime with every graph optimization disabled, on what the parity "
           "clauses compared (their first observations, masks and rollouts, a batch of each in "
           "turn, for a time budget), the artifact MUST act as those clauses require: the final "
           "action matches `predict()` within the parity tolerance (Box actions), exactly but "
           "at rounding ties (discrete actions), step by step with its state (recurrent "
           "policies).", needs_model=True, portability=True),
    Clause("PORT-03", "reference_parity", E,
           "The ONNX reference implementation acts like `predict()`",
           "Run by `onnx.reference` (the ONNX project's implementation of the operator specs) on "
           "what the parity clauses compared, as in PORT-02, the artifact MUST act as those "
           "clauses require, and MUST NOT reach an operator case the specs leave to the engine: "
           "a cast of a float to an integer type from NaN, an infinity or a value out of the "
           "type's range, or a `Clip` whose min exceeds its max. Where an `ArgMax` or `ArgMin` "
           "meets an exact tie, the artifact MUST also act so with such ties broken the other "
           "way (an engine may break them otherwise).", needs_model=True, portability=True),
    Clause("PORT-04", "runtimes", E, "The runtimes named with `--runtime` act like `predict()`",
           "Each runtime the user names (tract; OpenVINO on the CPU in float32) MUST load the "
           "artifact and, run on what the parity clauses compared as in PORT-02, act as those "
           "clauses require. Its verdict is one of: loads and matches; does not load (with the "
           "runtime's error); loads, differs (with the counterexample). Not applicable when "
           "no runtime is named.", needs_model=True, portability=True),
)

_BY_ID = {c.id: c for c in CLAUSES}
ID_PATTERN = re.compile(r"^[A-Z]+-\d{2}$")


def clause(clause_id: str) -> Clause:
    try:
        return _BY_ID[clause_id]
    except KeyError:
        raise KeyError(f"no clause {clause_id!r} in POLICY_ONNX_SPEC {SPEC_VERSION}") from None


def registry_problems() -> list[str]:
    """Defects of the registry itself: duplicate or malformed IDs and slugs."""
    problems = []
    seen: dict[str, int] = {}
    for c in CLAUSES:
        seen[c.id] = seen.get(c.id, 0) + 1
        if not ID_PATTERN.match(c.id):
            problems.append(f"{c.id}: ID does not read PREFIX-NN")
        if not re.fullmatch(r"[a-z0-9_]+", c.slug):
            problems.append(f"{c.id}: slug {c.slug!r} is not snake_case")
        if not re.search(r"\b(MUST|SHOULD|MAY)\b", c.text):
            problems.append(f"{c.id}: normative text has no MUST/SHOULD/MAY")
        if re.search(r"\b(should|test that)\b", c.title, re.IGNORECASE):
            problems.append(f"{c.id}: title says 'should'/'test that' instead of stating behaviour")
    problems += [f"{cid}: ID used {n} times" for cid, n in seen.items() if n > 1]
    return problems

