"""Choosing the trial to export (``best`` | N | ``pareto:K``) and getting its weights: the ones the
search saved, or a retraining from scratch on train + validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pdenas.architecture import Architecture
from pdenas.errors import InputError
from pdenas.network import PDENet, build_model
from pdenas.runs import RunFolder

__all__ = ["retrain", "saved_model", "select_trial", "trial_record"]


def select_trial(run_dir: str | Path, spec: str | int = "best") -> int:
    """The number of the trial ``spec`` names in a run.

    Args:
        run_dir: The run folder.
        spec: ``"best"`` (highest validation accuracy among completed, fully trained trials; ties
            go to the lower validation loss, then the lower cost), a trial number, or ``"pareto:K"`` (the K-th point of the
            Pareto front, by accuracy, from 1; ``pareto:1`` is ``best``).

    Raises:
        ValueError: An unknown trial, an empty front, or a malformed spec.
    """
    from pdenas.results import leaderboard, load_run, load_trials

    info = load_run(run_dir)
    trials = load_trials(run_dir)
    text = str(spec).strip().lower()
    if text.isdigit():
        number = int(text)
        known = sorted(int(n) for n in trials["number"])
        if number not in known:
            listed = ", ".join(map(str, known[:20])) + (" ..." if len(known) > 20 else "")
            raise InputError(f"--trial {number}: no such trial in {run_dir} "
                             f"(trials: {listed or 'none'})")
        return number
    if text != "best" and not text.startswith("pareto:"):
        raise InputError(f"--trial {spec!r}: expected best, a trial number or pareto:K")
    board = leaderboard(trials, info.objectives)
    if board.empty:
        raise InputError(f"{run_dir}: no completed, fully trained trial yet; "
                         "name one with --trial N")
    cost = info.cost_objective
    keys = ["val_accuracy", "val_loss"] + ([cost] if cost in board else []) + ["number"]
    order = [False] + [True] * (len(keys) - 1)  # accuracy, then the lower loss, cost, number
    if text == "best":
        return int(board.sort_values(keys, ascending=order).iloc[0]["number"])
    k = text.split(":", 1)[1]
    front = board[board["pareto_rank"] == 1].sort_values(keys, ascending=order)
    if not k.isdigit() or not 1 <= int(k) <= len(front):
        raise InputError(f"--trial {spec}: the Pareto front of {run_dir} has {len(front)} points "
                         f"(pareto:1 ... pareto:{len(front)}, by validation accuracy)")
    return int(front.iloc[int(k) - 1]["number"])


def trial_record(run_dir: Path, number: int, need_weights: bool) -> dict[str, Any]:
    """The trial's record as plain data; ``ValueError`` when it is missing, or with
    ``need_weights`` when the trial saved no weights."""
    folder = RunFolder(run_dir).trial(number)
    record = folder.read_record()
    if need_weights and not folder.has_weights():
        reason = f": {record.failure_reason}" if record.failure_reason else ""
        raise InputError(f"trial {number} has no saved weights (status {record.status}"
                         f"{reason}); retrain it with --retrain-epochs E")
    return record.to_dict()


def saved_model(run_dir: Path, number: int, arch: Architecture) -> PDENet:
    """The trial's saved best-validation weights in a freshly built model."""
    folder = RunFolder(run_dir).trial(number)
    model = build_model(arch)
    try:
        model.load_state_dict(folder.load_weights())
    except (RuntimeError, KeyError) as error:  # weights of another architecture
        raise InputError(f"{folder.weights_path}: cannot load the trial's weights: "
                         f"{str(error).splitlines()[0][:160]}") from None
    return model


def retrain(arch: Architecture, train: Any, data: Any, device: torch.device, *, seed: int,
             number: int) -> PDENet:
    """Trains the architecture from scratch on train + validation (final weights kept); on the
    training split alone when the data has no validation split of its own (``val_fraction: 0``
    lends the test split as ``val``, which must not be trained on)."""
    import dataclasses

    from pdenas.data import TensorSplit
    from pdenas.train import TrainingFailed, fit

    both = data
    if data.val is not data.test:
        merged = TensorSplit(torch.cat([data.train.x, data.val.x]),
                             torch.cat([data.train.y, data.val.y]))
        both = dataclasses.replace(data, train=merged)
    torch.manual_seed(seed * 100_003 + number)
    model = build_model(arch)
    try:
        fit(model, both, train, device, seed=seed + number, restore_best=False)
    except TrainingFailed as error:
        raise InputError(f"retraining trial {number} failed: {error.reason}") from None
    return model

