"""The weight files of an export: the folder's file names; ``model.pt`` (written and read back
safely) and ``model.safetensors`` with ``config.json`` (the same weights and architecture for
people who load models outside pdenas).

``model.pt`` is a plain dict of containers, numbers, strings and tensors, so ``torch.load`` reads it
with ``weights_only=True`` and no pickled code runs. ``model.safetensors`` holds the state_dict only
(safetensors never runs code); ``config.json`` says how to build the network it fits.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pdenas._bounded import load_json, short_repr
from pdenas.architecture import Architecture
from pdenas.errors import InputError
from pdenas.network import PDENet, build_model

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FILES",
    "FORMATS",
    "CONFIG_FILE",
    "CONFIG_FORMAT",
    "ExportedModel",
    "load_export",
    "load_model",
    "load_safetensors",
    "plain",
    "save_export",
    "save_safetensors",
]

EXPORT_FORMAT = "pdenas-export"
EXPORT_VERSION = 1
FORMATS = ("pt", "pt2", "safetensors", "onnx")
FILES = {"pt": "model.pt", "pt2": "model.pt2", "safetensors": "model.safetensors",
         "onnx": "model.onnx"}
"""The file each format is written to, inside the export folder."""
CONFIG_FILE = "config.json"
"""Written beside ``model.safetensors``: the architecture, the input normalisation, the classes."""
CONFIG_FORMAT = "pdenas-model-config"


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
    state = _state(model)
    payload = {
        **plain(dict(info or {})),
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


def _state(model: PDENet) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone()
            for k, v in model.state_dict().items()}


def _built(arch: Architecture, state: Mapping[str, torch.Tensor], where: Path) -> PDENet:
    """The network of ``arch`` holding ``state`` (eval mode); ``ValueError`` naming ``where``
    when the weights do not fit."""
    model = build_model(arch)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise InputError(f"{where}: weights do not fit the architecture: "
                         f"{str(error).splitlines()[0]}") from None
    return model.eval()


def save_safetensors(folder: str | Path, model: PDENet, *, mean: Sequence[float],
                     std: Sequence[float], classes: Sequence[str],
                     input_recipe: str | None = None) -> tuple[Path, Path]:
    """Writes ``model.safetensors`` (the state_dict) and ``config.json`` (what builds it) into
    ``folder``; returns both paths.

    ``config.json``: ``format`` (``CONFIG_FORMAT``), ``version``, ``architecture``
    (``Architecture.to_dict()``: ``pdenas.build_model(Architecture.from_dict(...))`` builds the
    network the weights fit), ``normalization`` (the input is (pixel / 255 - mean) / std per
    channel), ``classes`` (indexed by the logits), ``weights`` (the safetensors file's name),
    ``input`` (the recipe in words, with what a pixel is for the data set, ``input_recipe``).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    weights, config = folder / FILES["safetensors"], folder / CONFIG_FILE
    save_file(_state(model), str(weights), metadata={"format": CONFIG_FORMAT})
    config.write_text(json.dumps({
        "format": CONFIG_FORMAT, "version": EXPORT_VERSION,
        "architecture": model.arch.to_dict(),
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "classes": [str(c) for c in classes], "weights": FILES["safetensors"],
        "input": input_recipe or "(pixel / 255 - mean) / std, per channel, (N, C, H, W) float32",
    }, indent=2))
    return weights, config


def load_safetensors(folder: str | Path) -> PDENet:
    """The network of an export folder's ``config.json`` with ``model.safetensors`` loaded (eval
    mode, CPU).

    The architecture is checked against the caps and the file's tensor names and shapes (read
    from its header, before any weight is read) against the architecture before anything is
    built, so a config that claims a huge network allocates nothing.

    Raises:
        ValueError: A missing or damaged file, an architecture beyond the caps, or weights that
            do not fit the architecture (one ``InputError`` line naming the file).
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    try:
        config = load_json(config_path, what="model config")
    except OSError as error:
        raise InputError(f"{config_path}: cannot read the model config: "
                         f"{error.strerror or error}") from None
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        found = config.get("format") if isinstance(config, dict) else config
        raise InputError(f"{config_path}: not a pdenas model config "
                         f"(format {short_repr(found)})")
    weights = config.get("weights", FILES["safetensors"])
    if not isinstance(weights, str) or Path(weights).name != weights:
        raise InputError(f"{config_path}: weights: a file name in this folder, got "
                         f"{short_repr(weights)}")
    try:
        arch = Architecture.from_dict(config.get("architecture"))
        _check_caps(config_path, arch)
        with safe_open(str(folder / weights), framework="pt") as handle:
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
        _check_shapes(folder / weights, arch, shapes)
        state = load_file(str(folder / weights))
    except InputError:
        raise
    except (OSError, TypeError, ValueError, SafetensorError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise InputError(f"{config_path}: cannot load the safetensors export: {reason}") from None
    _check_storages(folder / weights, state)
    return _built(arch, state, folder)


def load_export(path: str | Path) -> ExportedModel:
    """Reads what ``pdenas export`` wrote, without running pickled code.

    Args:
        path: A ``model.pt`` export file, or an export folder holding one.

    Raises:
        ValueError: A missing path, or a file that is not a pdenas export (with the reason).
    """
    file = _export_file(Path(path))
    try:
        names = zipfile.ZipFile(file).namelist() if zipfile.is_zipfile(file) else []
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise InputError(f"{file}: not a pdenas export (a damaged zip archive: "
                         f"{short_repr(str(error))})") from None
    if any(n.endswith("constants.pkl") for n in names):
        raise InputError(f"{file}: a TorchScript archive, not a pdenas export")
    if any(n.endswith("/archive_format") for n in names):
        raise InputError(f"{file}: a torch.export program, not a pdenas export; "
                         "load it with torch.export.load")
    try:  # mmap: the storages stay in the file until the model copies them
        payload = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same answer
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{file}: not a pdenas export (unreadable as safe torch data: "
                         f"{reason[:120]})") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise InputError(f"{file}: not a pdenas export (no format marker {EXPORT_FORMAT!r}; a "
                         "plain state_dict or checkpoint has no architecture to build)")
    version = payload.get("version")
    if type(version) is not int or not 1 <= version <= EXPORT_VERSION:
        raise InputError(f"{file}: pdenas export version {short_repr(version)}; this pdenas reads "
                         f"version {EXPORT_VERSION} (update pdenas)")
    try:
        arch = Architecture.from_dict(payload.get("architecture"))
    except (TypeError, ValueError) as error:
        raise InputError(f"{file}: bad architecture: {error}") from None
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{file}: bad pdenas export: state_dict is not a mapping of tensors")
    _check_caps(file, arch)
    _check_shapes(file, arch, {k: tuple(v.shape) for k, v in state.items()})
    _check_storages(file, state)
    mean, std, classes = _extras(file, payload)
    model = _built(arch, state, file)
    known = ("format", "version", "architecture", "state_dict", "normalization", "classes")
    extra = {k: v for k, v in payload.items() if k not in known}
    return ExportedModel(model=model.eval(), architecture=arch, mean=mean, std=std,
                         classes=classes, info=extra)


def _extras(file: Path, payload: Mapping[str, Any]) -> tuple[tuple, tuple, tuple]:
    """``model.pt``'s normalisation (mean, std) and class names, checked for their types."""
    norm = payload.get("normalization", {})
    classes = payload.get("classes", ())
    if not isinstance(norm, dict):
        raise InputError(f"{file}: bad pdenas export: normalization: expected a mapping, got "
                         f"{type(norm).__name__}")
    values = {"normalization.mean": norm.get("mean", ()), "normalization.std": norm.get("std", ()),
              "classes": classes}
    for key, value in values.items():
        kind = str if key == "classes" else (int, float)
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, kind) and not isinstance(v, bool) for v in value):
            raise InputError(f"{file}: bad pdenas export: {key}: expected a list of "
                             f"{'strings' if kind is str else 'numbers'}, got {short_repr(value)}")
    return tuple(values["normalization.mean"]), tuple(values["normalization.std"]), tuple(classes)


def load_model(path: str | Path) -> PDENet:
    """Loads a model that ``pdenas export`` wrote (eval mode, on the CPU), safely.

    Every format is checked before anything is built: the architecture against the caps, the
    tensors' names and shapes against the architecture, and each tensor against the bytes its
    file holds for it (no pickled code runs; a file of a few KB cannot ask for GBs).

    Args:
        path: The export's ``model.pt``, its ``model.safetensors`` or ``config.json``, or the
            export folder (``model.pt`` when it holds one, else ``config.json`` with
            ``model.safetensors``).

    Returns:
        The network with its weights; ``model.arch`` is its architecture.

    Raises:
        ValueError: A missing path, or a file that is not a pdenas export (one ``InputError``
            line naming the file).
    """
    path = Path(path)
    if path.is_dir() and not (path / FILES["pt"]).exists() and (path / CONFIG_FILE).exists():
        return load_safetensors(path)
    if path.is_file() and (path.suffix == ".safetensors" or path.name == CONFIG_FILE):
        return load_safetensors(path.parent)
    return load_export(path).model


MAX_WIDTH, MAX_STEPS, MAX_UNITS, MAX_CLASSES, MAX_CHANNELS = 16_384, 10_000, 64, 1_000_000, 1024
"""Caps on an exported architecture, checked before any model is built from a file."""


def _check_caps(file: Path, arch: Architecture) -> None:
    """Refuses an architecture beyond the caps (before anything is built from it).

    Raises:
        ValueError: Naming the file, the key and the cap.
    """
    caps = (("widths", max(arch.widths), MAX_WIDTH), ("depths", sum(arch.depths), MAX_STEPS),
            ("units", len(arch.depths), MAX_UNITS), ("num_classes", arch.num_classes, MAX_CLASSES),
            ("in_channels", arch.in_channels, MAX_CHANNELS))
    for key, value, cap in caps:
        if value > cap:
            raise InputError(f"{file}: bad architecture: architecture.{key}: got "
                             f"{short_repr(value)}; allowed: at most {cap}")


def _check_shapes(file: Path, arch: Architecture, found: Mapping[str, tuple[int, ...]]) -> None:
    """Builds ``arch`` on the meta device (no memory) and checks that the file's tensors have
    exactly its names and shapes.

    Raises:
        ValueError: Naming the file and a tensor that does not fit.
    """
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(arch).state_dict().items()}
    if expected != dict(found):
        wrong = sorted(set(expected) ^ set(found)) or sorted(
            k for k in expected if expected[k] != found[k])
        raise InputError(f"{file}: weights do not fit the architecture "
                         f"({len(wrong)} tensors differ in name or shape, e.g. "
                         f"{short_repr(wrong[0])})")


def _check_storages(file: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Refuses tensors that claim more bytes than their storages hold: a stride-0 ``expand()``
    view, or views that share one storage, could otherwise make a file of a few KB a model of
    many GB. Each storage (counted once) must hold the bytes of all the tensors that view it.

    Raises:
        ValueError: Naming the file, the first such tensor and the bytes.
    """
    held: dict[int, int] = {}
    claimed: dict[int, int] = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage()
        key = storage.data_ptr() if storage.nbytes() else -id(tensor)
        held[key] = storage.nbytes()
        claimed[key] = claimed.get(key, 0) + tensor.numel() * tensor.element_size()
        if claimed[key] > held[key]:
            raise InputError(f"{file}: tensor {short_repr(name)} claims {claimed[key]:,} bytes "
                             f"but the file holds {held[key]:,} for it (a view that grows on "
                             "load); not a pdenas export")


def _export_file(path: Path) -> Path:
    if path.is_dir():
        if not (path / FILES["pt"]).is_file():
            raise InputError(f"{path}: no {FILES['pt']} or {CONFIG_FILE} in this folder; not "
                             "a pdenas export (export with --format pt or safetensors)")
        return path / FILES["pt"]
    if not path.is_file():
        raise InputError(f"{path}: no such file or folder; expected a pdenas export")
    return path



def plain(value: Any) -> Any:
    """JSON-like containers only (tuples to lists, numpy scalars to Python numbers)."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return value.item()
    return value
