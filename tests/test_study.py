"""StudyConfig validation and the shipped study files; the backends' own options."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pdenas.study import StudyConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_studies_load(path: Path) -> None:
    from pdenas.space import SearchSpace

    config = StudyConfig.load(path)
    assert config.name
    SearchSpace.load(config.space_path())  # the space it names exists and is valid


def test_round_trip() -> None:
    config = StudyConfig.load(ROOT / "studies" / "quickstart.yaml")
    again = StudyConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"colour": "red"}, "colour: unknown key"),
        ({"n_trials": 0}, "n_trials: got 0; allowed: an integer from 1 to 1000000"),
        ({"n_trials": "5"}, "n_trials: got '5'; allowed: an integer"),
        ({"objectives": ["flops"]}, "objectives: got ['flops']; allowed: val_accuracy first"),
        ({"objectives": ["val_accuracy", "beauty"]}, "objectives"),
        ({"device": "tpu"}, "device: got 'tpu'; allowed: auto, cpu, cuda"),
        ({"space": 5}, "space: got 5; allowed: a string"),
        ({"name": ".."}, "name: got '..'"),
        ({"timeout": float("nan")}, "timeout: got nan; allowed: a finite number"),
        ({"data": {"name": ["digits"]}}, "data.name: got ['digits']"),
        ({"stability": {"mode": "sometimes"}}, "stability.mode: got 'sometimes'; allowed: off, record"),
        ({"stability": {"radius": 1.5}}, "stability.radius: removed; the estimate's settings are constants"),
        ({"latency_repeats": 3}, "latency_repeats: removed; set the environment variable PDENAS_LATENCY_REPEATS"),
        ({"data": {"seed": 1}}, "data.seed: removed; the split is fixed"),
        ({"balance_families": "yes"}, "balance_families: got 'yes'; allowed: true or false"),
        ({"train": {"lr": -1}}, "train.lr"),
        ({"train": {"learning_rate": 0.1}}, "learning_rate"),
        ({"data": {"name": "imagenet"}}, "imagenet"),
        ({"constraints": {"max_params": -5}}, "constraints.max_params"),
        ({"workers": 0}, "workers: got 0; allowed: an integer from 1 to 64, or auto"),
        ({"workers": "all"}, "workers: got 'all'; allowed: an integer from 1 to 64, or auto"),
        ({"workers": True}, "workers: got True"),
        ({"workers": None}, "workers: got None"),
        ({"start_with": {"family": "resnet"}}, "start_with: got {'family': 'resnet'}; allowed: a list of mappings"),
        ({"start_with": ["resnet"]}, "start_with[0]: got 'resnet'; allowed: a mapping"),
        ({"start_with": [{"lr": [0.1]}]}, "start_with[0]: got {'lr': [0.1]}; allowed: a mapping of param names"),
    ],
)
def test_bad_values_name_the_key(change: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        StudyConfig.from_dict({"name": "x", **change})


def test_workers_takes_a_count_or_auto() -> None:
    assert StudyConfig.from_dict({"name": "x"}).workers == 1
    assert StudyConfig.from_dict({"name": "x", "workers": "auto"}).workers == "auto"
    assert StudyConfig.from_dict({"name": "x", "workers": 64}).workers == 64


@pytest.mark.parametrize(
    ("backend", "change", "needle"),
    [
        ("optuna", {"sampler": "annealing"}, "sampler: unknown 'annealing'; allowed: tpe"),
        ("ray", {"sampler": "annealing"}, "sampler: unknown 'annealing'"),
        ("ray", {"ray": {"scheduler": "asha"}}, "ray.scheduler: removed; use early_stop.rule"),
        ("ray", {"ray": {"address": "auto"}}, "ray.address: removed; use --address"),
        ("ray", {"ray": {"gpus_per_trial": float("nan")}}, "ray.gpus_per_trial: got nan"),
        ("ray", {"ray": {"colour": 1}}, "ray.colour: unknown key; allowed: cpus_per_trial"),
        ("ray", {"storage": "sqlite:///x.db"}, "storage: is for the optuna backend"),
        ("ray", {"balance_families": True}, "balance_families: is for the optuna backend"),
        ("optuna", {"balance_families": True, "sampler": "nsga2"},
         "balance_families: not with the nsga2 sampler"),
    ],
)
def test_each_backend_checks_its_own_options(backend: str, change: dict, needle: str) -> None:
    from pdenas.backends import get_backend

    config = StudyConfig.from_dict({"name": "x", **change})  # the study itself is fine
    with pytest.raises(ValueError, match=re.escape(needle)):
        get_backend(backend).check(config)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nn_trials: many\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: n_trials"):
        StudyConfig.load(path)
    with pytest.raises(ValueError, match="not found"):
        StudyConfig.load(tmp_path / "missing.yaml")


def test_sampler_mapping_form() -> None:
    config = StudyConfig.from_dict({"name": "x", "sampler": {"name": "nsga2", "population_size": 6}})
    assert config.sampler == "nsga2"
    assert config.sampler_options == {"population_size": 6}



def test_a_run_json_an_earlier_version_wrote_keeps_its_sampler_and_early_stopping() -> None:
    """``run.json`` written before the ``early_stop`` section: the sampler's options and the
    early stopping it ran with read as this version spells them (workers, compare, export)."""
    from pdenas.study import EarlyStop

    multi = StudyConfig.from_stored({
        "name": "old", "objectives": ["val_accuracy", "flops"], "sampler": "nsga2",
        "sampler_options": {"population_size": 8}, "pruner": "median", "pruner_options": {},
        "early_stop_rule": "mo_asha", "early_stop_warmup": 3, "early_stop_reduction": 2,
        "early_stop_percentile": 50.0})
    assert multi.sampler_options == {"population_size": 8}
    assert multi.early_stop == EarlyStop(rule="mo_asha", min_epochs=4, reduction=2)
    single = StudyConfig.from_stored({
        "name": "old", "sampler": "tpe", "sampler_options": {}, "pruner": "median",
        "pruner_options": {"n_startup_trials": 5, "n_warmup_steps": 3}, "early_stop_rule": "mo_asha"})
    assert single.early_stop == EarlyStop(rule="median", min_epochs=3)
    assert StudyConfig.from_stored({"name": "old", "pruner": "none"}).early_stop.rule == "none"
    with pytest.raises(ValueError, match="pruner: removed; use early_stop.rule"):
        StudyConfig.from_dict({"name": "old", "pruner": "none"})  # a study file is refused


def test_ray_runs_as_many_trials_at_once_as_the_cluster_holds() -> None:
    """``ray.max_concurrent`` left the study: the cluster's CPUs over cpus_per_trial, and its
    GPUs over gpus_per_trial when trials use them, at least one."""
    from pdenas.backends._ray_options import RayOptions

    assert RayOptions().concurrent({"CPU": 2.0}) == 2
    assert RayOptions(cpus_per_trial=2, gpus_per_trial=0.25).concurrent({"CPU": 32.0, "GPU": 4.0}) == 16
    assert RayOptions(cpus_per_trial=1, gpus_per_trial=0.5).concurrent({"CPU": 16.0, "GPU": 1.0}) == 2
    assert RayOptions(cpus_per_trial=4).concurrent({"CPU": 2.0}) == 1
    with pytest.raises(ValueError, match=r"^ray\.max_concurrent: removed; as many trials"):
        RayOptions.from_dict({"max_concurrent": 4})


def test_a_stored_percentile_rule_reads_as_the_median_rule() -> None:
    """run.json written while the median rule was called ``percentile`` still reads."""
    stored = {"name": "x", "early_stop": {"rule": "percentile", "min_epochs": 2, "percentile": 50}}
    config = StudyConfig.from_stored(stored)
    assert (config.early_stop.rule, config.early_stop.min_epochs) == ("median", 2)


def test_a_study_file_has_at_most_56_keys() -> None:
    """A key earns its place by a user who needs it: the leaf keys a study file may set, the
    ray section's included, stay at 56 or fewer (78 before the cut to 55; the 56th is
    ``data.standardise``, the authors' per-image standardisation, which changes the data every
    trial and the export see and so cannot be a search-space field)."""
    from pdenas._config import leaf_keys
    from pdenas.backends._ray_options import RayOptions

    keys = [k for k in leaf_keys(StudyConfig) if k != "ray"]
    keys += [f"ray.{k}" for k in leaf_keys(RayOptions)]
    assert len(keys) <= 56, len(keys)
    assert len(set(keys)) == len(keys)
