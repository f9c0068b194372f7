"""Where models and statistics lie on disk: an RL Zoo tree, Hub repositories and plain folders
are searched through, every agent named by where it lies, a Zoo run's best model and
checkpoints passed over (and found with their own statistics when given as files)."""

from __future__ import annotations

from pathlib import Path

from policy_onnx.layouts import (find_models, find_statistics, model_name, trained_normalized,
                                 unique_names)


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


ZOO_CONFIG = "!!python/object/apply:collections.OrderedDict\n- - - normalize\n    - true\n"
TREE = {
    # a Zoo run with statistics, its best model and a checkpoint (with its own statistics)
    "zoo/ppo/HalfCheetah-v3_1/HalfCheetah-v3.zip": "",
    "zoo/ppo/HalfCheetah-v3_1/HalfCheetah-v3/config.yml": ZOO_CONFIG,
    "zoo/ppo/HalfCheetah-v3_1/HalfCheetah-v3/vecnormalize.pkl": "",
    "zoo/ppo/HalfCheetah-v3_1/best_model.zip": "",
    "zoo/ppo/HalfCheetah-v3_1/rl_model_20000_steps.zip": "",
    "zoo/ppo/HalfCheetah-v3_1/rl_model_vecnormalize_20000_steps.pkl": "",
    "zoo/ppo/HalfCheetah-v3_1/rl_model_40000_steps.zip": "",
    # two runs of one environment, another algorithm
    "zoo/a2c/CartPole-v1_1/CartPole-v1.zip": "",
    "zoo/a2c/CartPole-v1_2/CartPole-v1.zip": "",
    "zoo/dqn/CartPole-v1_1/CartPole-v1.zip": "",
    # a Hub repository: its agent, its statistics, an archive that is not a model
    "zoo/hub/ppo-LunarLander-v2/ppo-LunarLander-v2.zip": "",
    "zoo/hub/ppo-LunarLander-v2/vec_normalize.pkl": "",
    "zoo/hub/ppo-LunarLander-v2/train_eval_metrics.zip": "",
    # a plain model whose name ends like a run number, in a folder that is not a Zoo run
    "zoo/mine/models_2/walker.zip": "",
    "zoo/mine/models_2/best_model.zip": "",
    # hidden folders are not searched
    "zoo/.cache/stale.zip": "",
}


def test_a_zoo_tree_is_searched_through_and_named_by_run(tmp_path):
    root = _tree(tmp_path, TREE) / "zoo"
    found = find_models([root])
    assert [p.relative_to(root).as_posix() for p in found.passed_over] == [
        "ppo/HalfCheetah-v3_1/best_model.zip", "ppo/HalfCheetah-v3_1/rl_model_20000_steps.zip",
        "ppo/HalfCheetah-v3_1/rl_model_40000_steps.zip"]
    assert unique_names(found.models) == [
        "a2c/CartPole-v1_1", "a2c/CartPole-v1_2", "dqn/CartPole-v1_1", "ppo-LunarLander-v2",
        "best_model", "walker", "ppo/HalfCheetah-v3_1"]
    # Given as files, a run's extras are checked, under names that say whose they are.
    run = root / "ppo" / "HalfCheetah-v3_1"
    assert find_models([run / "best_model.zip"]).models == [run / "best_model.zip"]
    assert model_name(run / "best_model.zip") == "ppo/HalfCheetah-v3_1/best_model"
    assert model_name(run / "rl_model_20000_steps.zip") == \
        "ppo/HalfCheetah-v3_1/rl_model_20000_steps"


def test_a_zoo_agent_has_one_name_however_its_path_is_written(tmp_path, monkeypatch):
    """Shards of a zoo on several machines must agree on names: relative or absolute."""
    root = _tree(tmp_path, TREE) / "zoo"
    monkeypatch.chdir(root / "ppo")
    relative = Path("HalfCheetah-v3_1") / "HalfCheetah-v3.zip"
    assert model_name(relative) == model_name(relative.absolute()) == "ppo/HalfCheetah-v3_1"
    assert unique_names(find_models([Path("HalfCheetah-v3_1")]).models) == ["ppo/HalfCheetah-v3_1"]


def test_statistics_are_found_where_each_layout_keeps_them(tmp_path):
    root = _tree(tmp_path, TREE) / "zoo"
    run = root / "ppo" / "HalfCheetah-v3_1"
    assert find_statistics(run / "HalfCheetah-v3.zip") == \
        run / "HalfCheetah-v3" / "vecnormalize.pkl"
    assert find_statistics(run / "best_model.zip") == run / "HalfCheetah-v3" / "vecnormalize.pkl"
    assert find_statistics(run / "rl_model_20000_steps.zip") == \
        run / "rl_model_vecnormalize_20000_steps.pkl"
    # A checkpoint never takes the run's final statistics: another point of training.
    assert find_statistics(run / "rl_model_40000_steps.zip") is None
    assert trained_normalized(run / "rl_model_40000_steps.zip") == \
        run / "HalfCheetah-v3" / "config.yml"
    hub = root / "hub" / "ppo-LunarLander-v2"
    assert find_statistics(hub / "ppo-LunarLander-v2.zip") == hub / "vec_normalize.pkl"
    assert find_statistics(root / "a2c" / "CartPole-v1_1" / "CartPole-v1.zip") is None
    assert trained_normalized(root / "a2c" / "CartPole-v1_1" / "CartPole-v1.zip") is None


def test_the_zoo_configuration_says_whether_observations_were_normalized(tmp_path):
    values = {"true": True, "false": False, "dict(norm_obs=True, norm_reward=False)": True,
              "dict(norm_obs=False, norm_reward=True)": False,
              "'{''norm_obs'': False, ''norm_reward'': True}'": False,
              "'{''norm_reward'': True}'": True}
    for i, (value, normalized) in enumerate(values.items()):
        run = tmp_path / f"algo{i}" / "Env-v0_1"
        _tree(run, {"Env-v0.zip": "", "Env-v0/config.yml":
                    f"!!python/object/apply:collections.OrderedDict\n- - - normalize\n"
                    f"    - {value}\n  - - policy\n    - MlpPolicy\n"})
        assert (trained_normalized(run / "Env-v0.zip") is not None) == normalized, value
