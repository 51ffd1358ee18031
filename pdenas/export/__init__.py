"""Export a chosen model: weights with its architecture, a torch.export program, safetensors, ONNX
and a model card.

``pdenas export RUN`` picks a trial of a run (``best``: the highest validation accuracy among the
completed, fully trained trials; a trial number; or ``pareto:K``, the K-th point of the Pareto
front by accuracy), takes its best-validation weights (or retrains it from scratch on train +
validation with ``--retrain-epochs``), evaluates it on the test split and writes, to one folder:

- ``model.pt``: a plain dict ``{"format": "pdenas-export", "version": 1, "architecture",
  "state_dict", "normalization", "classes", ...}`` that ``load_model`` reads with
  ``torch.load(weights_only=True)``: no pickled code runs;
- ``model.pt2`` (a ``torch.export`` program of the eval-mode network, dynamic batch dimension:
  ``torch.export.load("model.pt2").module()(images)``), ``model.safetensors`` with ``config.json``
  (the state_dict and the architecture that builds it, for loading outside pdenas) and
  ``model.onnx`` (``torch.onnx`` dynamo export, one file, dynamic batch dimension), each loaded
  back and compared with the PyTorch logits on test-split images;
- ``card.json`` and ``card.md``: what the model is, how well and how fast it runs, where it came
  from and the commands that reproduce it.

Everything is built in a staging folder and moved into place at the end, so bad input (or a
failure on the way) writes nothing; the output folder is checked for writing before the work,
and the staging folders of killed exports are removed by the next export. Exports always use
the plain forward pass in eval mode, so reversible models export like the others.

Loading is safe for every format: ``load_model`` reads ``model.pt`` (``weights_only``, mapped)
or ``config.json`` with ``model.safetensors`` and checks, before anything is built, the
architecture against the caps, the tensors' names and shapes against it, and that no tensor
claims more bytes than its file holds; ``load_pt2`` first refuses what ``torch.export.load``
would unpickle or grow (``check_pt2``).

The module map: ``_weights`` (the ``model.pt`` file and the folder's file names: save, safe load,
``load_model``; ``model.safetensors`` and ``config.json``), ``_formats`` (``.pt2`` and ONNX, each
format written and checked against PyTorch), ``_select`` (which trial, and its weights: saved or
retrained), ``_card`` (the model card as JSON and Markdown), ``_command`` (``export_trial``,
behind ``Run.export`` and ``pdenas export``).
"""

from __future__ import annotations

from pdenas.export._card import card_markdown, summary_lines
from pdenas.export._command import export_trial
from pdenas.export._formats import (
    CHECK_IMAGES,
    FormatCheck,
    check_pt2,
    default_formats,
    load_pt2,
    onnx_logits,
    parse_formats,
    write_formats,
)
from pdenas.export._select import select_trial
from pdenas.export._weights import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    FILES,
    FORMATS,
    ExportedModel,
    load_export,
    load_model,
    load_safetensors,
    save_export,
    save_safetensors,
)

__all__ = [
    "CHECK_IMAGES",
    "CONFIG_FILE",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "FILES",
    "FORMATS",
    "ExportedModel",
    "FormatCheck",
    "load_export",
    "load_model",
    "load_pt2",
    "load_safetensors",
    "onnx_logits",
    "card_markdown",
    "check_pt2",
    "default_formats",
    "export_trial",
    "parse_formats",
    "save_export",
    "save_safetensors",
    "select_trial",
    "summary_lines",
    "write_formats",
]
