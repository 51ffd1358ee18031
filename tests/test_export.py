"""Tests for pdenas.export: every format for every family, safe loading, and `pdenas export`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pdenas
from pdenas.architecture import Architecture
from pdenas.cli import main
from pdenas.export import (
    EXPORT_FORMAT,
    FILES,
    FORMATS,
    load_export,
    load_model,
    load_pt2,
    load_safetensors,
    onnx_logits,
    parse_formats,
    save_export,
    write_formats,
)
from pdenas.families import get_family
from pdenas.network import build_model

from conftest import search_quietly

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_SPACE = """
description: tiny, for export tests
families: [parabolic, hamiltonian]
num_units: 2
depth: 1
width: {base: 4, growth: 1, last: same}
step_size: 0.5
activation: relu
norm: tv
reversible: false
train: {optimizer: adamw, lr: 0.02}
"""

TINY_STUDY = """
name: tiny_export
data: {name: digits, train_limit: 240}
space: tiny_space.yaml
train: {epochs: 1, batch_size: 64, augment: false}
objectives: [val_accuracy, flops]
sampler: random
n_trials: 2
device: cpu
seed: 0
"""

FRESH_PROCESS = """
import json, sys
import onnxruntime, torch
import pdenas
from safetensors.torch import load_file
from pdenas.export import onnx_logits
folder, images = sys.argv[1], torch.load(sys.argv[2], weights_only=True)
model = pdenas.load_model(folder)
# safetensors + config.json as someone outside pdenas's export code would load them
config = json.load(open(folder + "/config.json"))
net = pdenas.build_model(pdenas.Architecture.from_dict(config["architecture"]))
net.load_state_dict(load_file(folder + "/model.safetensors"))
with torch.no_grad():
    out = {"pt": model(images), "pt2": torch.export.load(folder + "/model.pt2").module()(images),
           "safetensors": net.eval()(images)}
out["onnx"] = onnx_logits(folder + "/model.onnx", images)
print(json.dumps({k: v.tolist() for k, v in out.items()}))
"""


def tiny_arch(family: str, reversible: bool = False) -> Architecture:
    return Architecture(family=family, widths=(4, 6), depths=(2,), step_size=0.5, in_channels=1,
                        num_classes=3, reversible=reversible)


def images(n: int = 5, side: int = 8) -> torch.Tensor:
    return torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run made by `pdenas search`: two digits trials of one epoch each."""
    return search_quietly(tmp_path_factory.mktemp("export_run"),
                          {"tiny_space.yaml": TINY_SPACE, "tiny.yaml": TINY_STUDY}, "tiny.yaml")


def best_record(run: Path) -> dict:
    """The completed trial with the highest validation accuracy (ties: fewer FLOPs, then number)."""
    records = [json.loads(p.read_text()) for p in sorted(run.glob("trials/*/record.json"))]
    done = [r for r in records if r["status"] == "completed"]
    return min(done, key=lambda r: (-r["val_accuracy"], r["cost"]["flops"], r["number"]))


# --- formats, per family -------------------------------------------------------------------------
@pytest.mark.parametrize("family", pdenas.list_families())
def test_every_format_matches_pytorch(family: str, tmp_path: Path) -> None:
    reversible = get_family(family).reversible_scheme  # exercise reversible mode where it exists
    torch.manual_seed(0)
    model = build_model(tiny_arch(family, reversible)).train()  # export must switch to eval
    x = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated exporter (torch.jit) is used
        checks = write_formats(model, tmp_path, x, FORMATS, mean=(0.5,), std=(0.25,), classes=("a", "b", "c"))
    assert model.training, "the caller's model keeps its mode"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*FILES.values(), "config.json"])
    expected = build_model(model.arch)
    expected.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference = expected.eval()(x)
    assert checks["pt"].max_abs_diff == 0.0
    for fmt in FORMATS:
        assert checks[fmt].max_abs_diff < 1e-5 and checks[fmt].same_predictions == 1.0
        assert checks[fmt].images == len(x)
    loaded = load_export(tmp_path)
    assert loaded.architecture == model.arch and loaded.architecture.reversible == reversible
    assert not loaded.model.training
    assert loaded.mean == (0.5,) and loaded.std == (0.25,) and loaded.classes == ("a", "b", "c")
    with torch.no_grad():
        assert torch.equal(loaded.model(x), reference)
        assert torch.allclose(load_pt2(tmp_path / FILES["pt2"])(x), reference, atol=1e-5)
        assert torch.equal(load_safetensors(tmp_path)(x), reference)
    # The batch dimension stays free in both traced formats: one image, then seven.
    for n in (1, 7):
        batch = images(n)
        with torch.no_grad():
            want = expected(batch)
            assert torch.allclose(load_pt2(tmp_path / FILES["pt2"])(batch), want, atol=1e-5)
        assert torch.allclose(onnx_logits(tmp_path / FILES["onnx"], batch), want, atol=1e-5)


def test_an_opening_stride_of_two_exports_and_loads_back(tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = Architecture.from_dict({**tiny_arch("hamiltonian").to_dict(), "opening_stride": 2})
    model = build_model(arch).eval()
    checks = write_formats(model, tmp_path, images(), FORMATS)
    for fmt in FORMATS:
        assert checks[fmt].max_abs_diff < 1e-5 and checks[fmt].same_predictions == 1.0
    loaded = load_export(tmp_path)
    assert loaded.architecture.opening_stride == 2 and loaded.architecture == arch
    with torch.no_grad():
        assert torch.equal(loaded.model(images()), model(images()))
        assert torch.allclose(load_pt2(tmp_path / FILES["pt2"])(images()), model(images()), atol=1e-5)


def test_onnx_is_one_file_without_external_data(tmp_path: Path) -> None:
    import onnx

    model = build_model(tiny_arch("parabolic")).eval()
    (check,) = write_formats(model, tmp_path, images(1), ["onnx"]).values()  # one image is enough
    assert check.images == 1 and check.max_abs_diff < 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with torch.no_grad():
        assert torch.allclose(onnx_logits(tmp_path / "model.onnx", images(3)), model(images(3)), atol=1e-5)
    proto = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]


def test_reversible_model_after_training_exports_plain_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_arch("second_order", reversible=True)).train()
    loss = model(images()).logsumexp(1).mean()  # the reversible autograd Function runs here
    loss.backward()
    checks = write_formats(model, tmp_path, images(), ["pt", "pt2"])
    assert all(c.max_abs_diff < 1e-5 for c in checks.values())
    loaded = load_model(tmp_path / "model.pt")
    assert loaded.arch.reversible and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(images()), model.eval()(images()))


# --- load_model refuses what is not an export -----------------------------------------------
def _write_bad(kind: str, path: Path) -> Path:
    model = build_model(tiny_arch("parabolic"))
    if kind == "missing":
        return path / "nothing.pt"
    if kind == "text":
        path = path / "notes.pt"
        path.write_text("just some text\n")
    elif kind == "pickled_object":
        path = path / "object.pt"
        torch.save({"model": model}, path)  # a whole pickled module: refused, never unpickled
    elif kind == "state_dict":
        path = path / "weights.pt"
        torch.save(model.state_dict(), path)
    elif kind == "pt2":
        write_formats(model, path, images(), ["pt2"])
        path = path / FILES["pt2"]
    elif kind == "folder_without_export":
        (path / "empty").mkdir()
        path = path / "empty"
    else:
        good = save_export(path / "model.pt", model, mean=(0.0,), std=(1.0,), classes=("a",) * 3)
        payload = torch.load(good, weights_only=True)
        if kind == "newer_version":
            payload["version"] = 99
        elif kind == "bad_architecture":
            payload["architecture"]["family"] = "elliptic"
        else:  # weights that do not fit the architecture
            payload["state_dict"].popitem()
        path = path / f"{kind}.pt"
        torch.save(payload, path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("missing", "no such file"),
    ("text", "not a pdenas export"),
    ("pickled_object", "not a pdenas export"),
    ("state_dict", "no format marker"),
    ("pt2", "torch.export program"),
    ("folder_without_export", "no model.pt"),
    ("newer_version", "version 99"),
    ("bad_architecture", "family"),
    ("wrong_weights", "weights do not fit"),
])
def test_load_model_refuses_what_is_not_an_export(kind: str, message: str, tmp_path: Path) -> None:
    path = _write_bad(kind, tmp_path)
    with pytest.raises(ValueError, match=message) as info:
        pdenas.load_model(path)
    assert "\n" not in str(info.value)


def test_parse_formats() -> None:
    assert parse_formats("onnx, PT,onnx") == ("onnx", "pt")
    with pytest.raises(ValueError, match="torchscript is no longer written.*pt2"):
        parse_formats("pt,torchscript")
    for bad in ("pt,tflite", "", ","):
        with pytest.raises(ValueError, match="--format"):
            parse_formats(bad)


# --- the command, on a real tiny run -----------------------------------------------------------
def test_export_best_in_every_format_and_load_in_a_fresh_process(tiny_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(tiny_run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    best = best_record(tiny_run)
    out = tiny_run / "export" / f"trial-{best['number']}"
    assert f"exported trial {best['number']}" in printed and str(out) in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*FILES.values(), "config.json", "card.json", "card.md"])
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # as any new file here, none private
    card_md = (out / "card.md").read_text()
    assert "torch.jit" not in card_md and "torch.export.load" in card_md

    card = json.loads((out / "card.json").read_text())
    assert card["source"]["trial"] == best["number"] and card["source"]["study"] == "tiny_export"
    assert card["model"]["family"] == best["architecture"]["family"]
    assert card["metrics"]["val_accuracy"] == best["val_accuracy"]
    assert card["data"]["name"] == "digits" and card["data"]["test"] == 359
    # The digits run 0..16; the card and config.json say how they became pixels (0..255).
    assert "pixel = round(value * 255 / 16)" in card["data"]["input"]
    assert json.loads((out / "config.json").read_text())["input"] == card["data"]["input"]
    assert card["cost"]["params"] == best["cost"]["params"] and card["cost"]["flops"] == best["cost"]["flops"]
    assert card["reproduce"]["export"].startswith(f"pdenas export {tiny_run} --trial {best['number']}")
    assert set(card["checks"]) == set(FORMATS)
    assert all(c["max_abs_diff"] < 1e-4 and c["same_predictions"] == 1.0 for c in card["checks"].values())
    assert "test accuracy" in (out / "card.md").read_text()

    # The exported weights are the trial's saved best-validation weights.
    saved = torch.load(tiny_run / "trials" / str(best["number"]) / "model.pt", weights_only=True)
    exported = load_export(out)
    assert all(torch.equal(saved[k], v) for k, v in exported.model.state_dict().items())
    assert exported.info["metrics"]["test_accuracy"] == card["metrics"]["test_accuracy"]
    assert exported.classes == tuple(card["data"]["classes"])

    # A fresh process loads every format and predicts what this one does.
    from pdenas.data import DataConfig, load_data

    x = load_data(DataConfig(name="digits", train_limit=240)).test.x[:64]
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    logits = {k: torch.tensor(v) for k, v in json.loads(done.stdout.splitlines()[-1]).items()}
    with torch.no_grad():
        here = exported.model(x)
    for fmt in FORMATS:
        assert torch.equal(logits[fmt].argmax(1), here.argmax(1)), fmt
        assert torch.allclose(logits[fmt], here, atol=1e-4), fmt


def test_retrain_on_train_and_validation(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "retrained"
    code = main(["export", str(tiny_run), "--trial", "pareto:1", "--format", "pt",
                 "--retrain-epochs", "1", "--out", str(out), "--device", "cpu"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "card.md", "model.pt"]
    card = json.loads((out / "card.json").read_text())
    number = card["source"]["trial"]
    assert number == best_record(tiny_run)["number"]  # pareto:1 is the most accurate point
    assert card["training"]["weights"] == "retrained" and card["training"]["trained_on"] == "train+val"
    assert card["training"]["epochs"] == 1 and card["training"]["config"]["epochs"] == 1
    assert "--retrain-epochs 1" in card["reproduce"]["export"]
    saved = torch.load(tiny_run / "trials" / str(number) / "model.pt", weights_only=True)
    state = load_model(out).state_dict()
    assert state.keys() == saved.keys()
    assert any(not torch.equal(saved[k], state[k]) for k in saved if saved[k].is_floating_point())
    assert 0.0 <= card["metrics"]["test_accuracy"] <= 1.0


@pytest.mark.parametrize("args, message", [
    (["--trial", "99"], "--trial 99: no such trial"),
    (["--trial", "pareto:9"], "Pareto front"),
    (["--trial", "latest"], "expected best, a trial number or pareto:K"),
    (["--format", "pt,tflite"], "unknown format 'tflite'"),
    (["--retrain-epochs", "0"], "--retrain-epochs"),
    (["--trial", "0"], "trial 0 has no saved weights"),
])
def test_bad_input_exits_2_and_writes_nothing(args: list[str], message: str, tiny_run: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export"))
    (run / "trials" / "0" / "model.pt").unlink()  # a trial whose weights are gone
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    out = tmp_path / "out"
    assert main(["export", str(run), "--out", str(out), "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_export_marker_is_in_the_file(tmp_path: Path) -> None:
    path = save_export(tmp_path / "m.pt", build_model(tiny_arch("resnet")), mean=(0.1,), std=(0.2,),
                       classes=("a", "b", "c"), info={"note": ("x", 1)})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == EXPORT_FORMAT and payload["version"] == 1
    assert payload["note"] == ["x", 1] and payload["normalization"] == {"mean": [0.1], "std": [0.2]}


@pytest.mark.parametrize(("damage", "message"), [
    ("delete", "--trial 0: no such trial"),  # the record is the trial: without it there is none
    ("truncate", "trials/0/record.json: not valid JSON"),
])
def test_a_trial_without_a_readable_record_exits_2(tiny_run: Path, tmp_path: Path, damage: str,
                                                   message: str,
                                                   capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("export"))
    record = run / "trials" / "0" / "record.json"
    if damage == "delete":
        record.unlink()
    else:
        record.write_text(record.read_text()[:40])
    assert main(["export", str(run), "--trial", "0", "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
