"""YAML search spaces -> Tune param spaces, and every way a space or sweep config fails before Ray."""

from __future__ import annotations

import numpy as np
import pytest
import ray
from ray import tune

from recsearch.config import load_config, to_container
from recsearch.errors import ConfigError
from recsearch.models.base import model_class
from recsearch.tuning.plan import plan_sweep
from recsearch.tuning.space import check_algorithm, default_point, parse_space, tune_space


def draws(domain, n=400, seed=0):
    rng = np.random.default_rng(seed)
    return list(domain.sample(size=n, random_state=rng))


def test_every_sampler_becomes_its_tune_domain():
    space = tune_space(parse_space({
        "lr": {"loguniform": [1e-4, 1e-1]},
        "dropout": {"uniform": [0.0, 0.5]},
        "l2": {"quniform": [0.0, 0.1, 0.02]},
        "negatives": {"randint": [1, 3]},
        "dim": {"lograndint": [8, 16]},
        "k": {"qrandint": [10, 30, 10]},
        "layers": {"choice": [[64, 32], [128]]},
        "similarity": {"grid": ["cosine", "jaccard"]},
    }))
    assert space["similarity"] == tune.grid_search(["cosine", "jaccard"])
    lr = draws(space["lr"])
    assert min(lr) >= 1e-4 and max(lr) < 1e-1 and np.median(lr) < 1e-2  # log scale: half below the geometric middle
    assert set(draws(space["negatives"])) == {1, 2, 3}, "randint includes its upper bound in our configs"
    assert set(draws(space["k"])) == {10, 20, 30}
    assert min(draws(space["dim"])) >= 8 and max(draws(space["dim"])) == 16
    assert set(np.round(draws(space["l2"]), 6)) <= {0.0, 0.02, 0.04, 0.06, 0.08, 0.1}
    assert {tuple(v) for v in draws(space["layers"])} == {(64, 32), (128,)}
    assert all(0.0 <= v < 0.5 for v in draws(space["dropout"]))


@pytest.mark.parametrize("spec, message", [
    ({"lr": {"lognormal": [0, 1]}}, "unknown sampler 'lognormal'"),
    ({"lr": 0.01}, "expected one sampler"),
    ({"lr": {"uniform": [0, 1], "choice": [1]}}, "expected one sampler"),
    ({"lr": {"loguniform": [0.0, 1.0]}}, "needs low > 0"),
    ({"lr": {"uniform": [1.0, 0.5]}}, "needs low < high"),
    ({"lr": {"uniform": [1.0]}}, r"takes \[low, high\]"),
    ({"lr": {"uniform": ["a", 1]}}, "finite numbers"),
    ({"k": {"randint": [1.5, 4]}}, "must be integers"),
    ({"k": {"qrandint": [10, 100, 0]}}, "step q > 0"),
    ({"k": {"choice": []}}, "non-empty list"),
    ({"k": {"grid": "abc"}}, "non-empty list"),
    ({}, "non-empty mapping"),
])
def test_bad_samplers_fail_with_the_key_named(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        parse_space(spec, "search.space")
    if spec:
        assert f"search.space.{next(iter(spec))}" in str(err.value)


def test_optuna_cannot_take_a_grid_but_random_can():
    space = parse_space({"k": {"grid": [1, 2]}, "lr": {"loguniform": [1e-3, 1e-1]}})
    check_algorithm(space, "random")
    with pytest.raises(ConfigError, match="optuna cannot take grid samplers.*k"):
        check_algorithm(space, "optuna")
    with pytest.raises(ConfigError, match="'random' or 'optuna'"):
        check_algorithm(space, "bayes")


FAMILIES = ["pop", "itemknn", "userknn", "ease", "mf", "ncf", "lstm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_shipped_spaces_parse_and_use_the_agreed_hyperparameter_names(family):
    from hydra import compose, initialize_config_dir

    from recsearch.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        search = to_container(compose("config", overrides=[f"search={family}"]).search)
    space = parse_space(search["space"])
    check_algorithm(space, "optuna")  # every shipped space works with both algorithms
    agreed = {
        "pop": {"shrinkage"},
        "itemknn": {"k", "similarity", "shrinkage"},
        "userknn": {"k", "similarity", "shrinkage"},
        "ease": {"l2"},
        "mf": {"dim", "loss", "negatives", "lr", "l2", "optimizer", "batch_size", "amp"},
        "ncf": {"variant", "dim", "layers", "dropout", "negatives", "use_features", "lr", "l2", "optimizer",
                "batch_size", "amp"},
        "lstm": {"cell", "dim", "hidden", "layers", "dropout", "max_len", "lr", "l2", "optimizer", "batch_size",
                 "amp"},
    }[family]
    assert set(space) <= agreed


def test_single_family_plan_picks_the_models_space(tmp_path):
    plan = plan_sweep(["model=pop", f"out={tmp_path / 's'}", "search.num_samples=3"])
    assert plan.families == ["pop"] and plan.name == "s"
    assert plan.storage == str(tmp_path / "s" / "tune")
    assert plan.configs["pop"]["search"]["num_samples"] == 3
    assert set(plan.space("pop")) == {"shrinkage"}
    assert not ray.is_initialized()


def test_multi_family_plan_composes_each_family(tmp_path):
    registered = [f for f in ("pop", "itemknn", "mf") if _registered(f)]
    overrides = [f"search.models=[{','.join(registered)}]", f"out={tmp_path / 'multi'}", "train.max_epochs=4",
                 "train.min_epochs=2"]
    plan = plan_sweep(overrides)
    assert plan.families == registered
    for family in registered:
        config = plan.configs[family]
        assert config["model"]["_target_"] == load_config([f"model={family}"]).model._target_
        assert config["scheduler"]["max_t"] == 4 and config["out"] == str(tmp_path / "multi")
        assert config["scheduler"]["grace_period"] == 2, "ASHA's grace period is the warm-up, train.min_epochs"


def test_each_family_gets_its_own_asha_grace_period(tmp_path):
    plan = plan_sweep(["search.models=[itemknn,mf,ncf]", f"out={tmp_path}"])
    grace = {family: config["scheduler"]["grace_period"] for family, config in plan.configs.items()}
    assert grace == {"itemknn": 1, "mf": 5, "ncf": 8}  # conf/model/<family>.yaml's train.min_epochs


def test_family_overrides_reach_only_their_family(tmp_path):
    plan = plan_sweep(["search.models=[pop,itemknn]", f"out={tmp_path}",
                       "search.family_overrides={itemknn:['model.k=7','search.space.k.lograndint=[2,9]']}"])
    assert plan.configs["itemknn"]["model"]["k"] == 7
    assert plan.configs["itemknn"]["search"]["space"]["k"] == {"lograndint": [2, 9]}
    assert "k" not in plan.configs["pop"]["model"]
    with pytest.raises(ConfigError, match=r"search.family_overrides: mf not among search.models \['pop'\]"):
        plan_sweep(["search.models=[pop]", f"out={tmp_path}", "search.family_overrides={mf:['model.dim=8']}"])


@pytest.mark.parametrize("overrides, message", [
    (["search.space.shrinkage.loguniform=[5,1]"], "needs low < high"),
    (["+search.space.alpha={uniform:[0,1]}"], "alpha uniform .* which Popularity does not take .*model.alpha: unknown key"),
    (["search.algorithm=optuna", "~search.space.shrinkage", "+search.space.shrinkage={grid:[1,2]}"], "optuna cannot take grid"),
    (["search.num_samples=0"], "search.num_samples: Input should be greater than 0"),
    (["scheduler.grace_period=50"], "must not exceed scheduler.max_t"),
    (["scheduler.name=hyperband"], "scheduler.name: must be one of asha, fifo"),
    (["ray.cpus_per_trial=0"], "ray.cpus_per_trial: Input should be greater than 0"),
    (["ray.gpus_per_trial=1.5"], "above 1 must be a whole number"),
    (["device=cuda"], "ray.gpus_per_trial=0"),
    (["task.metric=ndcg@7"], "not among the evaluated metrics"),
    (["search.models=[pop,pop]"], "distinct model families"),
    (["search.models=[pop]", "search=pop"], "search=NAME picks one search space"),
    (["search.models=[pop,nosuchmodel]"], "nosuchmodel"),
])
def test_bad_sweep_config_fails_before_ray_starts(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        plan_sweep(["model=pop", f"out={tmp_path}", *overrides])
    assert not ray.is_initialized()


@pytest.mark.parametrize("space, message", [
    ("+search.space.k={uniform:[5,50]}", r"k uniform \[5.0, 50.0\] can draw 21.69.*model.k: Input should be a valid integer"),
    ("+search.space.k={choice:[5,dice]}", "k choice .* can draw 'dice'.*model.k: Input should be a valid integer"),
])
def test_a_space_that_can_draw_values_the_model_refuses_fails_before_ray_starts(tmp_path, space, message):
    with pytest.raises(ConfigError, match=message):
        plan_sweep(["model=itemknn", f"out={tmp_path}", "~search.space.k", space])
    assert not ray.is_initialized()


def test_a_sweep_command_with_a_bad_space_exits_2_without_starting_ray(tmp_path, capsys):
    from recsearch.cli import main

    assert main(["sweep", "model=pop", f"out={tmp_path / 'bad'}", "search.space.shrinkage={loguniform:[0,1]}"]) == 2
    assert "needs low > 0" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "bad").exists()


def _registered(family: str) -> bool:
    try:
        model_class(family)
        return True
    except ValueError:
        return False


def test_the_first_trial_starts_from_the_model_defaults_the_space_allows():
    space = parse_space({
        "dim": {"choice": [16, 32]},  # default 64 is not a choice: sampled instead
        "lr": {"loguniform": [1e-3, 3e-2]},
        "l2": {"loguniform": [1e-3, 1e-1]},
        "negatives": {"randint": [1, 8]},
        "optimizer": {"grid": ["adam", "sgd"]},  # a grid always runs all its values
        "layers": {"choice": [[8, 4], [16, 8]]},  # a list value: Tune cannot preset it
    })
    config = to_container(load_config(["model=mf"]))
    model = model_class("mf")(task="ranking", device="cpu",
                              **{k: v for k, v in config["model"].items() if k != "_target_"})
    model.hparams["layers"] = [8, 4]
    # l2: null in the config; the model resolves it (0.01 for ranking) and that value is used
    assert default_point(space, model.hparams) == {"lr": 0.005, "l2": 0.01, "negatives": 1}


@pytest.mark.parametrize(("sampler", "inside", "outside"), [
    ({"uniform": [0.0, 1.0]}, [0.0, 0.5, 1], [1.5, "0.5", True]),
    ({"randint": [1, 8]}, [1, 8, 4.0], [0, 9, 2.5]),
    ({"choice": ["adam", [32, 16]]}, ["adam", [32, 16]], ["sgd", [32]]),
])
def test_a_sampler_knows_its_domain(sampler, inside, outside):
    (parsed,) = parse_space({"x": sampler}).values()
    assert all(parsed.allows(v) for v in inside) and not any(parsed.allows(v) for v in outside)


def test_a_cluster_with_gpus_no_trial_asks_for_is_worth_a_warning():
    from recsearch.tuning.sweep import unused_gpus

    assert "ray.gpus_per_trial=0" in unused_gpus(4, 0, "auto")
    assert unused_gpus(4, 0.25, "auto") is None and unused_gpus(0, 0, "auto") is None
    assert unused_gpus(4, 0, "cpu") is None  # asked for the CPU on purpose
