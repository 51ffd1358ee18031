"""Export a chosen model: weights with its architecture, TorchScript, ONNX and a model card.

``pdenas export RUN`` picks a trial of a run (``best``: the highest validation accuracy among the
completed, fully trained trials; a trial number; or ``pareto:K``, the K-th point of the Pareto
front by accuracy), takes its best-validation weights (or retrains it from scratch on train +
validation with ``--retrain-epochs``), evaluates it on the test split and writes, to one folder:

- ``model.pt``: a plain dict ``{"format": "pdenas-export", "version": 1, "architecture",
  "state_dict", "normalization", "classes", ...}`` that ``load_model`` reads with
  ``torch.load(weights_only=True)``: no pickled code runs;
- ``model.torchscript.pt`` (traced in eval mode) and ``model.onnx`` (``torch.onnx`` dynamo export,
  one file, dynamic batch dimension), each loaded back and compared with the PyTorch logits on
  test-split images;
- ``card.json`` and ``card.md``: what the model is, how well and how fast it runs, where it came
  from and the commands that reproduce it.

Everything is built in a staging folder and moved into place at the end, so bad input (or a
failure on the way) writes nothing. Exports always use the plain forward pass in eval mode, so
reversible models export like the others.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdenas.architecture import Architecture
from pdenas.network import PDENet, build_model

__all__ = [
    "CHECK_IMAGES",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FILES",
    "FORMATS",
    "ExportedModel",
    "FormatCheck",
    "load_export",
    "load_model",
    "load_torchscript",
    "onnx_logits",
    "card_markdown",
    "export_trial",
    "parse_formats",
    "run_export",
    "save_export",
    "select_trial",
    "summary_lines",
    "write_formats",
]

EXPORT_FORMAT = "pdenas-export"
EXPORT_VERSION = 1
FORMATS = ("pt", "torchscript", "onnx")
FILES = {"pt": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}
"""The file each format is written to, inside the export folder."""
CHECK_IMAGES = 256
"""Test-split images on which each exported format is compared with the PyTorch model."""


# --- the weights file: write and read safely ---------------------------------------------------
@dataclass(frozen=True)
class ExportedModel:
    """What ``model.pt`` holds, with the model built and its weights loaded (eval mode, CPU).

    Attributes:
        model: The network.
        architecture: Its architecture (``reversible`` as trained).
        mean: Per-channel input mean on the 0..1 pixel scale.
        std: Per-channel input standard deviation; the input is (pixel / 255 - mean) / std.
        classes: Class names, indexed by the logits.
        info: The rest of the file: data set, image size, metrics, source.
    """

    model: PDENet
    architecture: Architecture
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)


def save_export(
    path: str | Path,
    model: PDENet,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    classes: Sequence[str],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a model as a pdenas export file (plain containers and tensors only).

    Args:
        path: The file to write.
        model: The network; its weights are copied to the CPU.
        mean: Per-channel input mean (0..1 scale).
        std: Per-channel input standard deviation (0..1 scale).
        classes: Class names.
        info: Extra JSON-like metadata (data set, metrics, source).

    Returns:
        The path written.
    """
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
             for k, v in model.state_dict().items()}
    payload = {
        **_plain(dict(info or {})),
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "architecture": model.arch.to_dict(),
        "state_dict": state,
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "classes": [str(c) for c in classes],
    }
    path = Path(path)
    torch.save(payload, path)
    return path


def load_export(path: str | Path) -> ExportedModel:
    """Reads what ``pdenas export`` wrote, without running pickled code.

    Args:
        path: A ``model.pt`` export file, or an export folder holding one.

    Raises:
        ValueError: A missing path, or a file that is not a pdenas export (with the reason).
    """
    file = _export_file(Path(path))
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            if any(n.endswith("constants.pkl") for n in archive.namelist()):
                raise ValueError(f"{file}: a TorchScript archive, not a pdenas export; "
                                 "load it with torch.jit.load or pdenas.export.load_torchscript")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same answer
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{file}: not a pdenas export (unreadable as safe torch data: "
                         f"{reason[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{file}: not a pdenas export (no format marker {EXPORT_FORMAT!r}; a "
                         "plain state_dict or checkpoint has no architecture to build)")
    version = payload.get("version")
    if type(version) is not int or not 1 <= version <= EXPORT_VERSION:
        raise ValueError(f"{file}: pdenas export version {version!r}; this pdenas reads "
                         f"version {EXPORT_VERSION} (update pdenas)")
    try:
        arch = Architecture.from_dict(payload.get("architecture"))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file}: bad architecture: {error}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{file}: bad pdenas export: state_dict is not a mapping of tensors")
    model = build_model(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{file}: weights do not fit the architecture: "
                         f"{str(error).splitlines()[0]}") from None
    norm = payload.get("normalization") or {}
    known = ("format", "version", "architecture", "state_dict", "normalization", "classes")
    extra = {k: v for k, v in payload.items() if k not in known}
    return ExportedModel(model=model.eval(), architecture=arch,
                         mean=tuple(norm.get("mean", ())), std=tuple(norm.get("std", ())),
                         classes=tuple(payload.get("classes", ())), info=extra)


def load_model(path: str | Path) -> PDENet:
    """Loads a model that ``pdenas export`` wrote (eval mode, on the CPU), safely.

    Args:
        path: The export's ``model.pt`` or the export folder.

    Returns:
        The network with its weights; ``model.arch`` is its architecture.

    Raises:
        ValueError: A missing path, or a file that is not a pdenas export.
    """
    return load_export(path).model


def _export_file(path: Path) -> Path:
    if path.is_dir():
        if not (path / FILES["pt"]).is_file():
            raise ValueError(f"{path}: no {FILES['pt']} in this folder; not a pdenas export "
                             "(export with --format pt)")
        return path / FILES["pt"]
    if not path.is_file():
        raise ValueError(f"{path}: no such file or folder; expected a pdenas export")
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """Loads an exported TorchScript file on the CPU (without the deprecation warning)."""
    with _quiet():
        return torch.jit.load(str(path), map_location="cpu")


def onnx_logits(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Runs an exported ONNX file with onnxruntime (CPU) on a batch of standardised images."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (logits,) = session.run(None, {name: images.detach().cpu().float().numpy()})
    return torch.from_numpy(logits)


# --- TorchScript and ONNX, each checked against PyTorch ---------------------------------------
@dataclass(frozen=True)
class FormatCheck:
    """How an exported file compares with the PyTorch model on the same images.

    Attributes:
        file: File name inside the export folder.
        max_abs_diff: Largest absolute difference of the logits.
        same_predictions: Fraction of images with the same predicted class.
        images: Images compared.
    """

    file: str
    max_abs_diff: float
    same_predictions: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"file": self.file, "max_abs_diff": self.max_abs_diff,
                "same_predictions": self.same_predictions, "images": self.images}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silences torch.jit's deprecation warnings and the ONNX exporter's progress prints."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.filterwarnings("ignore", r".*torch\.jit.* is deprecated", FutureWarning)
        yield


def write_formats(
    model: PDENet,
    folder: str | Path,
    images: torch.Tensor,
    formats: Sequence[str] = FORMATS,
    *,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
    classes: Sequence[str] = (),
    info: Mapping[str, Any] | None = None,
) -> dict[str, FormatCheck]:
    """Writes a model in each format, loads each back and compares it with the PyTorch model.

    The model is copied to the CPU in eval mode (reversible units then run their plain forward
    pass); the model passed in is left as it was.

    Args:
        model: The network.
        folder: Existing folder to write ``FILES[format]`` into.
        images: Standardised test images (N, C, H, W); the comparison inputs.
        formats: Some of ``FORMATS``.
        mean: Per-channel input mean, stored in ``model.pt``.
        std: Per-channel input standard deviation, stored in ``model.pt``.
        classes: Class names, stored in ``model.pt``.
        info: Extra metadata for ``model.pt``.

    Returns:
        Per format, how the reloaded file compares with PyTorch.
    """
    folder = Path(folder)
    net = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).float().eval()
    x = images.detach().to("cpu", torch.float32).contiguous()
    if len(x) == 0:
        raise ValueError("write_formats: needs at least one image to compare the formats on")
    example = x[:4] if len(x) > 1 else x.repeat(2, 1, 1, 1)  # a batch > 1 keeps it dynamic
    with torch.no_grad():
        reference = net(x)
    checks = {}
    for fmt in formats:
        path = folder / FILES[fmt]
        if fmt == "pt":
            save_export(path, net, mean=mean, std=std, classes=classes, info=info)
            with torch.no_grad():
                out = load_model(path)(x)
        elif fmt == "torchscript":
            with _quiet(), torch.no_grad():
                traced = torch.jit.trace(net, example, check_trace=False)
                torch.jit.save(traced, str(path))
            with torch.no_grad():
                out = load_torchscript(path)(x)
        else:
            _write_onnx(net, example, path)
            out = onnx_logits(path, x)
        checks[fmt] = _compare(FILES[fmt], reference, out)
    return checks


def _write_onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    batch = torch.export.Dim("batch")
    with _quiet(), torch.no_grad():
        torch.onnx.export(net, (example,), str(path), dynamo=True, external_data=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), verbose=False)


def _compare(file: str, reference: torch.Tensor, out: torch.Tensor) -> FormatCheck:
    out = out.to(reference.dtype)
    if out.shape != reference.shape:
        raise RuntimeError(f"{file}: output shape {tuple(out.shape)} != {tuple(reference.shape)}")
    diff = float((out - reference).abs().max()) if len(reference) else 0.0
    same = float((out.argmax(1) == reference.argmax(1)).float().mean()) if len(reference) else 1.0
    return FormatCheck(file=file, max_abs_diff=diff, same_predictions=same, images=len(reference))


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """Parses ``"pt,onnx"`` (or a list) into known formats, in order, without repeats.

    Raises:
        ValueError: An unknown or empty format list.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    formats: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item not in FORMATS:
            raise ValueError(f"--format: unknown format {item!r}; allowed: {', '.join(FORMATS)}")
        if item not in formats:
            formats.append(item)
    if not formats:
        raise ValueError(f"--format: empty; allowed: {', '.join(FORMATS)}")
    return tuple(formats)


def _plain(value: Any) -> Any:
    """JSON-like containers only (tuples to lists, numpy scalars to Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value


# --- choosing a trial of a run ------------------------------------------------------------------
def select_trial(run_dir: str | Path, spec: str | int = "best") -> int:
    """The number of the trial ``spec`` names in a run.

    Args:
        run_dir: The run folder.
        spec: ``"best"`` (highest validation accuracy among completed, fully trained trials; ties
            go to the lower cost), a trial number, or ``"pareto:K"`` (the K-th point of the
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
            raise ValueError(f"--trial {number}: no such trial in {run_dir} "
                             f"(trials: {listed or 'none'})")
        return number
    if text != "best" and not text.startswith("pareto:"):
        raise ValueError(f"--trial {spec!r}: expected best, a trial number or pareto:K")
    board = leaderboard(trials, info.objectives)
    if board.empty:
        raise ValueError(f"{run_dir}: no completed, fully trained trial yet; "
                         "name one with --trial N")
    cost = info.objectives[1] if len(info.objectives) > 1 else "flops"
    keys = ["val_accuracy"] + ([cost] if cost in board else []) + ["number"]
    order = [False] + [True] * (len(keys) - 1)
    if text == "best":
        return int(board.sort_values(keys, ascending=order).iloc[0]["number"])
    k = text.split(":", 1)[1]
    front = board[board["pareto_rank"] == 1].sort_values(keys, ascending=order)
    if not k.isdigit() or not 1 <= int(k) <= len(front):
        raise ValueError(f"--trial {spec}: the Pareto front of {run_dir} has {len(front)} points "
                         f"(pareto:1 ... pareto:{len(front)}, by validation accuracy)")
    return int(front.iloc[int(k) - 1]["number"])


def _trial_record(run_dir: Path, number: int, need_weights: bool) -> dict[str, Any]:
    from pdenas.study import trial_dir

    folder = trial_dir(run_dir, number)
    if not (folder / "record.json").is_file():
        raise ValueError(f"trial {number}: no record in {folder} (was the run copied "
                         "without its trials/ folder?)")
    record = json.loads((folder / "record.json").read_text())
    if need_weights and not (folder / "model.pt").is_file():
        reason = f": {record['failure_reason']}" if record.get("failure_reason") else ""
        raise ValueError(f"trial {number} has no saved weights (status {record.get('status')}"
                         f"{reason}); retrain it with --retrain-epochs E")
    return record


# --- the export command ----------------------------------------------------------------------
def export_trial(
    run_dir: str | Path,
    trial: str | int = "best",
    formats: str | Sequence[str] = FORMATS,
    retrain_epochs: int | None = None,
    out: str | Path | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Exports one trial of a run (see the module docstring) and returns its model card.

    Args:
        run_dir: The run folder.
        trial: ``best``, a trial number or ``pareto:K``.
        formats: Some of ``FORMATS`` (a comma list or a sequence).
        retrain_epochs: Retrain from scratch on train + validation for this many epochs instead
            of taking the trial's saved weights.
        out: The export folder (default ``RUN/export/trial-N``).
        device: Where to retrain, evaluate and time: "auto", "cpu" or "cuda".

    Raises:
        ValueError: Bad input, before anything is written.
    """
    from pdenas.data import load_data
    from pdenas.results import load_run
    from pdenas.study import StudyConfig, resolve_device
    from pdenas.train import TrainConfig, evaluate

    run_dir = Path(run_dir)
    info = load_run(run_dir)
    fmts = parse_formats(formats)
    if retrain_epochs is not None and (isinstance(retrain_epochs, bool) or retrain_epochs < 1):
        raise ValueError(f"--retrain-epochs: must be an integer >= 1, got {retrain_epochs!r}")
    number = select_trial(run_dir, trial)
    record = _trial_record(run_dir, number, need_weights=retrain_epochs is None)
    arch = Architecture.from_dict(record["architecture"])
    out = Path(out) if out else run_dir / "export" / f"trial-{number}"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: exists and is not a folder")
    config = StudyConfig.from_dict(info["config"])
    dev = resolve_device(device)
    data = load_data(config.data, device=dev)
    train = TrainConfig.from_dict(record.get("train") or {})
    if retrain_epochs is None:
        model = _saved_model(run_dir, number, arch).to(dev)
    else:
        train = TrainConfig.from_dict({**train.to_dict(), "epochs": retrain_epochs})
        model = _retrain(arch, train, data, dev, seed=config.seed, number=number)
    test_loss, test_accuracy = evaluate(model.eval(), data.test, dev)
    card = {
        "format": "pdenas-model-card", "version": EXPORT_VERSION,
        "model": {"family": arch.family, "h": arch.step_size, "depths": list(arch.depths),
                  "widths": list(arch.widths), "activation": arch.activation,
                  "norm": arch.norm, "reversible": arch.reversible},
        "architecture": arch.to_dict(),
        "data": {"name": data.name, "image_size": list(data.image_size),
                 "in_channels": data.in_channels, "classes": list(data.classes),
                 "mean": list(data.mean), "std": list(data.std),
                 "input": "(pixel / 255 - mean) / std, per channel, (N, C, H, W) float32",
                 "train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "metrics": {"val_accuracy": record.get("val_accuracy"), "test_accuracy": test_accuracy,
                    "test_loss": test_loss},
        "cost": _cost(model, (arch.in_channels, *data.image_size), dev),
        "search_cost": record.get("cost", {}),
        "training": {"weights": "search" if retrain_epochs is None else "retrained",
                     "trained_on": "train" if retrain_epochs is None else "train+val",
                     "epochs": retrain_epochs or record.get("epochs_trained"),
                     "config": train.to_dict()},
        "source": {"run": str(run_dir.resolve()), "study": info.get("study_name"),
                   "study_file": info.get("study_file"), "backend": info.get("backend"),
                   "trial": number, "selected_by": str(trial), "status": record.get("status")},
        "reproduce": _commands(info, run_dir, number, fmts, retrain_epochs),
        "versions": {"pdenas": _version(), "torch": torch.__version__},
    }
    meta = {k: card[k] for k in ("data", "metrics", "source", "training")}
    with tempfile.TemporaryDirectory(prefix="pdenas-export-") as tmp:
        staging = Path(tmp)
        checks = write_formats(model, staging, data.test.x[:CHECK_IMAGES], fmts, mean=data.mean,
                               std=data.std, classes=data.classes, info=meta)
        card["files"] = {fmt: FILES[fmt] for fmt in fmts} | {"card": ["card.json", "card.md"]}
        card["checks"] = {fmt: check.to_dict() for fmt, check in checks.items()}
        card = _plain(card)
        (staging / "card.json").write_text(json.dumps(card, indent=2))
        (staging / "card.md").write_text(card_markdown(card))
        _move_into(staging, out)
    card["out"] = str(out)
    return card


def _saved_model(run_dir: Path, number: int, arch: Architecture) -> PDENet:
    """The trial's saved best-validation weights in a freshly built model."""
    from pdenas.study import trial_dir

    path = trial_dir(run_dir, number) / "model.pt"
    model = build_model(arch)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # noqa: BLE001 - a damaged or foreign file: one line, exit 2
        raise ValueError(f"{path}: cannot load the trial's weights: "
                         f"{str(error).splitlines()[0][:160]}") from None
    return model


def _cost(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> dict[str, Any]:
    from pdenas.cost import count_flops, count_parameters, measure_latency

    return {"params": count_parameters(model), "flops": count_flops(model, shape),
            "latency_ms": measure_latency(model, shape, 1, device, repeats=10),
            "latency_device": str(device)}


def _move_into(staging: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in sorted(staging.iterdir()):
        target = out / item.name
        if target.exists():
            target.unlink()
        shutil.move(str(item), str(target))


def _retrain(arch: Architecture, train: Any, data: Any, device: torch.device, *, seed: int,
             number: int) -> PDENet:
    """Trains the architecture from scratch on train + validation (final weights kept)."""
    import dataclasses

    from pdenas.data import TensorSplit
    from pdenas.train import TrainingFailed, fit

    merged = TensorSplit(torch.cat([data.train.x, data.val.x]),
                         torch.cat([data.train.y, data.val.y]))
    both = dataclasses.replace(data, train=merged)
    torch.manual_seed(seed * 100_003 + number)
    model = build_model(arch)
    try:
        fit(model, both, train, device, seed=seed + number, restore_best=False)
    except TrainingFailed as error:
        raise ValueError(f"retraining trial {number} failed: {error.reason}") from None
    return model


def _commands(info: Mapping[str, Any], run_dir: Path, number: int, formats: Sequence[str],
              retrain_epochs: int | None) -> dict[str, str]:
    import shlex

    config = info.get("config", {})
    search = ["pdenas", "search", str(info.get("study_file") or "STUDY.yaml"),
              "--out", str(run_dir), "--n-trials", str(config.get("n_trials")),
              "--seed", str(config.get("seed"))]
    if info.get("backend") == "ray":
        search += ["--backend", "ray"]
    export = ["pdenas", "export", str(run_dir), "--trial", str(number),
              "--format", ",".join(formats)]
    if retrain_epochs is not None:
        export += ["--retrain-epochs", str(retrain_epochs)]
    return {"search": shlex.join(search), "export": shlex.join(export)}


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
    lines += ["", "Load: `pdenas.load_model(\"model.pt\")` (safe: weights_only), "
              "`torch.jit.load(\"model.torchscript.pt\")`, onnxruntime for `model.onnx` "
              "(input `images`, dynamic batch).", "", "## Reproduce", "",
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


def run_export(args: argparse.Namespace) -> int:
    """The ``pdenas export`` command; returns the exit status.

    Raises:
        ValueError: Bad input (unknown trial or format, a trial without weights, ...), before
            anything is written; the command line turns it into one line and exit status 2.
    """
    card = export_trial(args.run, trial=args.trial, formats=args.format,
                        retrain_epochs=args.retrain_epochs, out=args.out, device=args.device)
    print("\n".join(summary_lines(card)))
    return 0
