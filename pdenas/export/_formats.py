"""Every export format written, loaded back and checked against the PyTorch model on the same
images: ``model.pt``, a ``torch.export`` program (``model.pt2``), safetensors with ``config.json``,
ONNX; parsing ``--format``."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pdenas._bounded import short_repr
from pdenas.errors import InputError
from pdenas.export._weights import (FILES, FORMATS, load_model, load_safetensors, save_export,
                                   save_safetensors)
from pdenas.network import PDENet

__all__ = [
    "CHECK_IMAGES",
    "FormatCheck",
    "check_pt2",
    "default_formats",
    "load_pt2",
    "onnx_logits",
    "parse_formats",
    "write_formats",
]

CHECK_IMAGES = 256
"""Test-split images on which each exported format is compared with the PyTorch model."""


def load_pt2(path: str | Path) -> nn.Module:
    """Loads an exported ``torch.export`` program (``model.pt2``) as a callable module (CPU).

    The same as ``torch.export.load(path).module()`` (no pdenas code is needed to run it), after
    ``check_pt2`` has refused what ``torch.export.load`` would unpickle or allocate unchecked.

    Raises:
        ValueError: A file that is not such a program, or holds more than tensors and a graph
            (one ``InputError`` line naming the file).
    """
    check_pt2(path)
    try:
        return torch.export.load(str(path)).module()
    except Exception as error:  # noqa: BLE001 - any unloadable program gets the same answer
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise InputError(f"{path}: cannot load the torch.export program: {reason}") from None


PT2_MAX_JSON = 16 << 20
"""The largest graph or payload config read from a ``.pt2`` archive (a pdenas network's graph
is well under 1 MB)."""
PT2_MAX_INPUTS = 64 << 20
"""The largest sample-inputs file of a ``.pt2`` archive (pdenas stores 4 images)."""


def check_pt2(path: str | Path) -> None:
    """Refuses a ``.pt2`` archive that ``torch.export.load`` would not load safely.

    ``torch.export.load`` unpickles (``weights_only=False``) a weight or constant marked
    ``use_pickle``, a custom or opaque object, a legacy weights file, and sample inputs that
    ``weights_only`` refuses; it loads AOTInductor libraries; and it builds each weight as a
    view of its record with the sizes and strides the archive claims (a zero-byte record
    becomes ``torch.zeros`` of the claimed size). So only a graph, tensors stored raw, safe
    sample inputs and text extras are allowed, and each record must hold the bytes of each
    tensor that views it.

    Raises:
        ValueError: Naming the file and the first thing refused.
    """
    path = Path(path)
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a torch.export program (not a .pt2 zip archive)")
    try:
        with zipfile.ZipFile(path) as archive:
            _check_pt2_archive(path, archive)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: a damaged .pt2 archive ({short_repr(str(error))})") from None


def _check_pt2_archive(path: Path, archive: zipfile.ZipFile) -> None:
    """``check_pt2`` on the open archive."""
    entries = [i for i in archive.infolist() if not i.is_dir() and "/" in i.filename]
    infos = {i.filename.split("/", 1)[-1]: i for i in entries}
    if len(infos) != len(entries):  # which copy torch reads is not ours to guess
        raise InputError(f"{path}: a .pt2 archive with a file named twice; refused")
    models = [n[len("models/"):-len(".json")] for n in infos
              if n.startswith("models/") and n.endswith(".json")]
    if infos.get("archive_format") is None or archive.read(
            infos["archive_format"]).strip() != b"pt2" or not models:
        raise InputError(f"{path}: not a torch.export program (no pt2 archive format)")

    def read(name: str, limit: int) -> bytes:
        if infos[name].file_size > limit:
            raise InputError(f"{path}: {name} of {infos[name].file_size:,} bytes is larger "
                             f"than the limit of {limit:,}")
        return archive.read(infos[name])

    allowed = {"archive_format", "archive_version", "byteorder"}
    for model in models:
        allowed |= {f"models/{model}.json", f"data/sample_inputs/{model}.pt"}
        for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
            name = f"data/{kind}/{model}_{kind}_config.json"
            if name not in infos:
                raise InputError(f"{path}: not a torch.export program (no {name})")
            allowed.add(name)
            try:
                config = json.loads(read(name, PT2_MAX_JSON))["config"]
                entries = [(str(fqn), meta) for fqn, meta in config.items()]
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                raise InputError(f"{path}: {name} is damaged") from None
            allowed |= _check_payloads(path, infos, f"data/{kind}/", prefix, entries)
        inputs = f"data/sample_inputs/{model}.pt"
        if inputs in infos:
            try:
                torch.load(io.BytesIO(read(inputs, PT2_MAX_INPUTS)), weights_only=True)
            except Exception:  # noqa: BLE001 - torch would unpickle it unchecked
                raise InputError(f"{path}: {inputs} is not plain tensor data; refused "
                                 "(torch.export.load would unpickle it)") from None
    for name in infos:
        if name not in allowed and not name.startswith((".data/", "extra/")):
            raise InputError(f"{path}: holds {short_repr(name)}, which pdenas does not load "
                             "(compiled code or pickled objects); not a pdenas export")


def _check_payloads(path: Path, infos: Mapping[str, Any], folder: str, prefix: str,
                    entries: list[tuple[str, Any]]) -> set[str]:
    """The records a ``.pt2`` payload config names, each checked: stored raw (not pickled),
    named ``prefix``N, holding the bytes of each tensor that views it (tensors may alias one
    record, as tied weights do: the program keeps them as views, so only a view larger than its
    record, a stride-0 one, could grow)."""
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    claimed: dict[str, int] = {}
    for fqn, meta in entries:
        try:
            record, tensor = folder + str(meta["path_name"]), meta["tensor_meta"]
            dims = [int(d["as_int"]) for d in tensor["sizes"]]  # symbolic sizes are refused
            strides = [int(d["as_int"]) for d in tensor["strides"]]
            offset = int(tensor["storage_offset"]["as_int"])
            size = _SERIALIZE_TO_TORCH_DTYPE[tensor["dtype"]].itemsize
        except (KeyError, TypeError, ValueError, AttributeError):
            raise InputError(f"{path}: tensor {short_repr(fqn)} has no plain tensor metadata; "
                             "refused") from None
        if meta.get("use_pickle") or not record[len(folder):].startswith(prefix):
            raise InputError(f"{path}: tensor {short_repr(fqn)} is stored as a pickled object; "
                             "refused (torch.export.load would unpickle it)")
        if record not in infos:
            raise InputError(f"{path}: tensor {short_repr(fqn)}: no record {short_repr(record)}")
        if min([*dims, *strides, offset], default=0) < 0 or len(strides) != len(dims):
            raise InputError(f"{path}: tensor {short_repr(fqn)} has negative or mismatched "
                             "sizes, strides or offset; refused")
        reach = (offset + sum((d - 1) * s for d, s in zip(dims, strides)) + 1) * size
        claimed[record] = math.prod(dims) * size
        if claimed[record] > infos[record].file_size or (
                claimed[record] and reach > infos[record].file_size):
            raise InputError(f"{path}: tensor {short_repr(fqn)} claims {claimed[record]:,} bytes "
                             f"but the file holds {infos[record].file_size:,} for it (a view that "
                             "grows on load); refused")
    return set(claimed)


def onnx_logits(path: str | Path, images: torch.Tensor) -> torch.Tensor:
    """Runs an exported ONNX file with onnxruntime (CPU) on a batch of standardised images."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (logits,) = session.run(None, {name: images.detach().cpu().float().numpy()})
    return torch.from_numpy(logits)



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
    """Silences the ONNX exporter's progress prints and warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
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
        elif fmt == "pt2":
            _write_pt2(net, example, path)
            with torch.no_grad():
                out = load_pt2(path)(x)
        elif fmt == "safetensors":
            save_safetensors(folder, net, mean=mean, std=std, classes=classes,
                             input_recipe=(info or {}).get("data", {}).get("input"))
            with torch.no_grad():
                out = load_safetensors(folder)(x)
        else:
            _write_onnx(net, example, path)
            out = onnx_logits(path, x)
        checks[fmt] = _compare(FILES[fmt], reference, out)
    return checks


def _write_pt2(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    """A ``torch.export`` program of the eval-mode network with a dynamic batch dimension."""
    batch = torch.export.Dim("batch")
    with torch.no_grad():
        program = torch.export.export(net, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


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


ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
"""What the ONNX export and its check need (``pip install 'pdenas[onnx]'``)."""


def default_formats() -> tuple[str, ...]:
    """Every format, ONNX only when its packages are installed (the default of ``export``)."""
    import importlib.util

    onnx = all(importlib.util.find_spec(name) is not None for name in ONNX_PACKAGES)
    return tuple(f for f in FORMATS if f != "onnx" or onnx)


def parse_formats(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parses ``"pt,onnx"`` (or a list) into known formats, in order, without repeats; None is
    ``default_formats()``.

    Raises:
        ValueError: An unknown or empty format list, or onnx without its packages.
    """
    if text is None:
        return default_formats()
    items = text.split(",") if isinstance(text, str) else list(text)
    formats: list[str] = []
    for item in (str(i).strip().lower() for i in items):
        if item == "torchscript":
            raise InputError("--format: torchscript is no longer written (torch.jit is "
                             "deprecated); use pt2, a torch.export program; allowed: "
                             + ", ".join(FORMATS))
        if item not in FORMATS:
            raise InputError(f"--format: unknown format {item!r}; allowed: {', '.join(FORMATS)}")
        if item not in formats:
            formats.append(item)
    if not formats:
        raise InputError(f"--format: empty; allowed: {', '.join(FORMATS)}")
    if "onnx" in formats and "onnx" not in default_formats():
        raise InputError("--format onnx: needs the onnx, onnxscript and onnxruntime packages; "
                         "allowed: pip install 'pdenas[onnx]', or leave onnx out")
    return tuple(formats)

