"""Where models and their statistics lie on disk, in the layouts people keep them in, and what
the suite calls each model.

- The RL Zoo (its `logs/` and the rl-trained-agents repository): a run of algorithm ALGO on
  environment ENV is the folder `ALGO/ENV_N/`, holding the agent `ENV.zip`, its configuration
  and VecNormalize statistics in `ENV/` (`config.yml`, `vecnormalize.pkl`), and possibly
  `best_model.zip` (the best evaluation) and checkpoints `rl_model_STEPS_steps.zip` (with
  `rl_model_vecnormalize_STEPS_steps.pkl` beside them).
- A Hugging Face Hub repository of an SB3 agent: a folder holding the agent's zip, possibly
  `vec_normalize.pkl`, `config.yml` and archives that are not models (`train_eval_metrics.zip`).
- Anything else: a `.zip` is a model; `NAME/vecnormalize.pkl` beside `NAME.zip` holds its
  statistics.

A folder given to --model is searched through: every agent in it is one policy of the run,
named by where it lies (`ppo/CartPole-v1_1` for a Zoo run: the algorithm and the run). A Zoo
run's `best_model.zip` and checkpoints are not agents of their own there (the Zoo publishes,
and its `enjoy.py` loads, `ENV.zip`): they are passed over, counted in the run's header, and
checked when given as files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ZOO_STATISTICS = "vecnormalize.pkl"
HUB_STATISTICS = "vec_normalize.pkl"
CONFIGURATION = "config.yml"
BEST_MODEL = "best_model.zip"
CHECKPOINT = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps$")
RUN_FOLDER = re.compile(r"^(?P<env>.+)_(?P<run>\d+)$")
# Archives beside an agent that are not models: the Hub's evaluation metrics (rl_zoo3's
# push_to_hub writes them).
NOT_MODELS = ("train_eval_metrics.zip",)


@dataclass(frozen=True)
class Found:
    """The models in the folders and files given to --model."""
    models: list[Path]
    passed_over: list[Path]  # best models and checkpoints of Zoo runs, found in folders


def find_models(paths: list[Path]) -> Found:
    """Files as they are; each folder replaced by the agents in it, searched through, in
    sorted order (hidden folders skipped)."""
    models, passed_over = [], []
    for path in paths:
        if not path.is_dir():
            models.append(path)
            continue
        for candidate in sorted(path.rglob("*.zip")):
            relative = candidate.relative_to(path).parts
            if any(part.startswith(".") for part in relative) or candidate.name in NOT_MODELS:
                continue
            (passed_over if _run_extra(candidate) else models).append(candidate)
    return Found(models, passed_over)


def zoo_run_env(folder: Path) -> str | None:
    """The environment of a Zoo run folder `ENV_N` (one holding `ENV.zip` or `ENV/`)."""
    run = RUN_FOLDER.match(folder.name)
    if run and ((folder / run["env"]).is_dir() or (folder / f"{run['env']}.zip").is_file()):
        return run["env"]
    return None


def _run_extra(path: Path) -> bool:
    """A Zoo run's best model or checkpoint (beside the run's own agent)."""
    return (path.name == BEST_MODEL or bool(CHECKPOINT.match(path.stem))) \
        and zoo_run_env(path.parent) is not None


def model_name(path: Path) -> str:
    """What the suite calls a model: `ALGO/ENV_N` for the agent of a Zoo run (`ALGO/ENV_N/NAME`
    for its best model or a checkpoint), the Hub repository's name for its agent, else the
    file's stem (whether the path is given relative or not)."""
    path = path.absolute()
    env = zoo_run_env(path.parent)
    if env is not None and path.parent.parent.name:
        run = f"{path.parent.parent.name}/{path.parent.name}"
        return run if env == path.stem else f"{run}/{path.stem}"
    return path.stem


def unique_names(paths: list[Path]) -> list[str]:
    """`model_name` of each path; two models of one name are told apart by their folders, the
    same file given twice by a number."""
    names = [model_name(p) for p in paths]
    for name in {n for n in names if names.count(n) > 1}:
        group = [i for i, n in enumerate(names) if n == name]
        told = [f"{paths[i].absolute().parent.name}/{name}" for i in group]
        if len(set(told)) == len(told):
            for i, new in zip(group, told):
                names[i] = new
    return [n if names.count(n) == 1 else f"{n}-{names[:i + 1].count(n)}"
            for i, n in enumerate(names)]


def statistics_candidates(model_path: Path) -> list[Path]:
    """Where the VecNormalize statistics of a model lie in the RL Zoo's or the Hub's layout, in
    the order they are looked for: a checkpoint's own, beside it; else `NAME/vecnormalize.pkl`
    beside `NAME.zip`, the run's `ENV/vecnormalize.pkl` (for its best model), the Hub's
    `vec_normalize.pkl`."""
    folder = model_path.parent
    checkpoint = CHECKPOINT.match(model_path.stem)
    if checkpoint:
        return [folder / f"{checkpoint['prefix']}_vecnormalize_{checkpoint['steps']}_steps.pkl"]
    env = zoo_run_env(folder)
    return [folder / model_path.stem / ZOO_STATISTICS,
            *([folder / env / ZOO_STATISTICS] if env else []), folder / HUB_STATISTICS]


def find_statistics(model_path: Path) -> Path | None:
    """The first of `statistics_candidates` that is a file."""
    return next((p for p in statistics_candidates(model_path) if p.is_file()), None)


def trained_normalized(model_path: Path) -> Path | None:
    """The configuration beside a model (the Zoo's `ENV/config.yml`, the Hub's `config.yml`)
    when it says the model was trained with observations normalized by VecNormalize."""
    folder = model_path.parent
    env = zoo_run_env(folder)
    for candidate in (folder / model_path.stem / CONFIGURATION,
                      *([folder / env / CONFIGURATION] if env else []),
                      folder / CONFIGURATION):
        if candidate.is_file():
            return candidate if _normalizes_observations(candidate) else None
    return None


def _normalizes_observations(config: Path) -> bool:
    """The Zoo's hyperparameters (a YAML list of [key, value] pairs) say `normalize: true`, or
    normalize keyword arguments that do not turn observation normalization off."""
    try:
        text = config.read_text(errors="replace")
    except OSError:
        return False
    found = re.search(r"^[ \t-]*- normalize[ \t]*\n[ \t]*- (?P<value>.+)$", text, re.MULTILINE)
    if not found:
        return False
    value = found["value"].strip().strip("'\"")
    if value.lower() in ("true", "yes"):
        return True
    if value.lower() in ("false", "no", "null", "~"):
        return False
    return not re.search(r"norm_obs['\"]*\s*[=:]\s*False", value)
