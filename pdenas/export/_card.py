"""The model card: what an exported model is, how well and how fast it runs, where it came from
and the commands that reproduce it, as JSON (``card.json``) and Markdown (``card.md``); and what
``pdenas export`` prints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdenas.architecture import Architecture
from pdenas.data.config import dataset_info
from pdenas.export._weights import EXPORT_VERSION

__all__ = ["card_markdown", "input_recipe", "model_card", "summary_lines"]


def model_card(
    model: nn.Module,
    arch: Architecture,
    data: Any,
    device: torch.device,
    *,
    record: Mapping[str, Any],
    info: Mapping[str, Any],
    train: Any,
    run_dir: Path,
    number: int,
    trial: str | int,
    formats: Sequence[str],
    retrain_epochs: int | None,
    test_loss: float,
    test_accuracy: float,
) -> dict[str, Any]:
    """The card of an evaluated model, less ``files`` and ``checks`` (added once they are written).

    Args:
        model: The exported network (its cost is measured on ``device``).
        arch: Its architecture.
        data: The study's ``DataSplits``.
        device: Where the latency is timed.
        record: The trial's record.
        info: The run's ``run.json``.
        train: The ``TrainConfig`` the weights were trained with.
        run_dir: The run folder.
        number: The trial number.
        trial: How the trial was selected (``best``, N or ``pareto:K``).
        formats: The formats exported.
        retrain_epochs: Epochs of retraining on train + validation; None for the search weights.
        test_loss: Loss on the test split.
        test_accuracy: Accuracy on the test split.
    """
    return {
        "format": "pdenas-model-card", "version": EXPORT_VERSION,
        "model": {"family": arch.family, "h": arch.step_size, "depths": list(arch.depths),
                  "widths": list(arch.widths), "activation": arch.activation,
                  "norm": arch.norm, "reversible": arch.reversible,
                  "opening_stride": arch.opening_stride, "start": arch.start,
                  "layer_init": arch.layer_init, "bn_eps": arch.bn_eps},
        "architecture": arch.to_dict(),
        "data": {"name": data.name, "image_size": list(data.image_size),
                 "in_channels": data.in_channels, "classes": list(data.classes),
                 "mean": list(data.mean), "std": list(data.std),
                 "standardise": getattr(data, "standardise", "channel"),
                 "input": input_recipe(data),
                 "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "metrics": {"val_accuracy": record.get("val_accuracy"), "test_accuracy": test_accuracy,
                    "test_loss": test_loss},
        "cost": _cost(model, (arch.in_channels, *data.image_size), device),
        "search_cost": record.get("cost", {}),
        "training": {"weights": "search" if retrain_epochs is None else "retrained",
                     "trained_on": "train" if retrain_epochs is None else "train+val",
                     "epochs": retrain_epochs or record.get("epochs_trained"),
                     "config": train.to_dict()},
        "source": {"run": str(run_dir.resolve()), "study": info.get("study_name"),
                   "study_file": info.get("study_file"), "backend": info.get("backend"),
                   "trial": number, "selected_by": str(trial), "status": record.get("status")},
        "reproduce": _commands(info, run_dir, number, formats, retrain_epochs),
        "versions": {"pdenas": _version(), "torch": torch.__version__},
    }


def input_recipe(data: Any) -> str:
    """What a model's input is, in words (the card's and ``config.json``'s ``input``), for the
    data's ``standardise``: per channel with the training split's statistics, or per image."""
    pixels = dataset_info(data.name).pixels
    if getattr(data, "standardise", "channel") == "image":
        return ("each image standardised on its own (the authors' normalizeData.m): "
                "(x - mean(x)) / max(std(x), 1 / sqrt(n)) over its n = C*H*W values, x = pixel "
                "on the 0..255 scale, std with n - 1 (mean 0 and std 1 below leave it as it is); "
                f"(N, C, H, W) float32, where pixel is {pixels}")
    return ("(pixel / 255 - mean) / std, per channel, (N, C, H, W) float32, "
            f"where pixel is {pixels}")


def _cost(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    from pdenas.cost import count_flops, count_parameters, measure_latency

    return {"params": count_parameters(model), "flops": count_flops(model, shape),
            "latency_ms": measure_latency(model, shape, 1, device, repeats=10),
            "latency_device": str(device)}



def _commands(info: Mapping[str, Any], run_dir: Path, number: int, formats: Sequence[str],
              retrain_epochs: int | None) -> dict[str, str]:
    import shlex

    config = info.get("config", {})
    search = ["pdenas", "search", _study_argument(info.get("study_file")),
              "--out", str(run_dir), "--n-trials", str(config.get("n_trials")),
              "--seed", str(config.get("seed"))]
    search += [f"--set={key}={value}" for key, value in _overrides(info)]
    if info.get("backend") == "ray":
        search += ["--backend", "ray"]
    export = ["pdenas", "export", str(run_dir), "--trial", str(number),
              "--format", ",".join(formats)]
    if retrain_epochs is not None:
        export += ["--retrain-epochs", str(retrain_epochs)]
    return {"search": shlex.join(search), "export": shlex.join(export)}


def _study_argument(study_file: str | None) -> str:
    """A shipped study by its name, another by its path."""
    from pdenas._resources import shipped_file

    if not study_file:
        return "STUDY.yaml"
    path = Path(study_file)
    shipped = shipped_file("studies", path.stem)
    return path.stem if shipped is not None and shipped.resolve() == path.resolve() else str(path)


def _overrides(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The study keys the run changed from its file (``--set`` items, JSON values), so the
    reproduce command runs the same study; none when the file is gone or unchanged."""
    import json

    from pdenas.study import StudyConfig

    study_file = info.get("study_file")
    if not study_file or not Path(study_file).is_file():
        return []
    try:
        stored = StudyConfig.load(study_file).to_dict()
    except ValueError:
        return []

    def leaves(data: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(data, Mapping) and data:
            return {k: v for key, value in data.items()
                    for k, v in leaves(value, f"{prefix}{key}.").items()}
        return {prefix[:-1]: data}

    old, new = leaves(stored), leaves(info.get("config", {}))
    flags = ("n_trials", "seed")
    return [(key, json.dumps(value)) for key, value in new.items()
            if key not in flags and (key not in old or old[key] != value)]


def _version() -> str:
    import pdenas

    return str(getattr(pdenas, "__version__", "unknown"))


def card_markdown(card: Mapping[str, Any]) -> str:
    """The model card as Markdown."""
    m, d, metrics, cost = card["model"], card["data"], card["metrics"], card["cost"]
    src = card["source"]
    val = metrics.get("val_accuracy")
    lines = [
        f"# {m['family']} PDE network (study {src['study']}, trial {src['trial']})", "",
        "| | |", "|---|---|",
        f"| family | {m['family']} |", f"| h (step size) | {m['h']:.4g} |",
        f"| depths (time steps per unit) | {', '.join(map(str, m['depths']))} |",
        f"| widths | {', '.join(map(str, m['widths']))} |",
        f"| activation / norm / reversible | {m['activation']} / {m['norm']} / {m['reversible']} |",
        f"| opening stride | {m.get('opening_stride', 1)} |",
        f"| first step (start) | {m.get('start', 'rest')} |",
        f"| opening/connector/classifier init | {m.get('layer_init', 'torch')} |",
        f"| batch-norm eps | {m.get('bn_eps', 1e-5):g} |",
        f"| input standardisation | {d.get('standardise', 'channel')} |",
        f"| data set | {d['name']} ({d['image_size'][0]}x{d['image_size'][1]}, "
        f"{d['in_channels']} channel(s), {len(d['classes'])} classes) |",
        f"| validation accuracy (search) | {'-' if val is None else f'{100 * val:.2f} %'} |",
        f"| test accuracy ({d['test']} images) | {100 * metrics['test_accuracy']:.2f} % |",
        f"| parameters | {cost['params']:,} |", f"| FLOPs per image | {cost['flops']:,} |",
        f"| latency (batch 1, {cost['latency_device']}) | {cost['latency_ms']:.3f} ms |",
        f"| weights | {card['training']['weights']} on {card['training']['trained_on']}, "
        f"{card['training']['epochs']} epochs |",
        f"| source | run {src['run']}, study {src['study']}, trial {src['trial']} "
        f"(selected by {src['selected_by']}) |", "",
        f"Input: {d['input']}; mean {d['mean']}, std {d['std']}.", "",
        "## Files", "", "| format | file | max abs diff vs PyTorch | same predictions |",
        "|---|---|---|---|",
    ]
    for fmt, check in card.get("checks", {}).items():
        lines.append(f"| {fmt} | {check['file']} | {check['max_abs_diff']:.3g} | "
                     f"{100 * check['same_predictions']:.1f} % of {check['images']} test images |")
    loaders = {
        "pt": "`pdenas.load_model(\"model.pt\")` (safe: `weights_only`)",
        "pt2": "`torch.export.load(\"model.pt2\").module()` (plain PyTorch, no pdenas)",
        "safetensors": "`safetensors.torch.load_file(\"model.safetensors\")` with `config.json` "
                       "(the architecture: `pdenas.build_model(pdenas.Architecture.from_dict("
                       "config[\"architecture\"]))`)",
        "onnx": "onnxruntime for `model.onnx` (input `images`, output `logits`)",
    }
    written = [fmt for fmt in loaders if fmt in card.get("files", loaders)]
    lines += ["", "Load (every file takes a dynamic batch of standardised images):", ""]
    lines += [f"- {loaders[fmt]};" for fmt in written]
    lines += ["", "## Reproduce", "",
              "```", card["reproduce"]["search"], card["reproduce"]["export"], "```", ""]
    return "\n".join(lines)


def summary_lines(card: Mapping[str, Any]) -> list[str]:
    """What ``pdenas export`` prints."""
    m, metrics = card["model"], card["metrics"]
    lines = [f"exported trial {card['source']['trial']} ({m['family']}, h={m['h']:.3g}, depths "
             f"{'-'.join(map(str, m['depths']))}, widths {'-'.join(map(str, m['widths']))}) "
             f"to {card['out']}",
             f"test accuracy {100 * metrics['test_accuracy']:.2f}% "
             f"({card['data']['test']} images), weights: {card['training']['weights']}"]
    for fmt, check in card["checks"].items():
        lines.append(f"  {fmt:<11} {check['file']:<22} max |diff| {check['max_abs_diff']:.2e}, "
                     f"same predictions {100 * check['same_predictions']:.1f}%")
    lines.append("  card        card.json, card.md")
    return lines

