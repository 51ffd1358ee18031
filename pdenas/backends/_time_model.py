"""A candidate's seconds before it is built, and draws from the part of the space that fits.

A search with ``--timeout`` spends its time on candidates that fit: before a candidate is built,
``TimeModel.predict`` gives its seconds from its architecture and epochs, and the runner skips a
draw predicted not to fit (``TrialStatus.SKIPPED``: not trained, not counted toward the budget,
told to the sampler as a violated constraint). The model is refitted from the trials already
measured by this host on this device (every worker's, through the run folder)::

    seconds = setup + epochs * exp(a) * F ** b * family_factor

where F is the candidate's FLOPs per image, counted on a copy built on the meta device (no
memory, no weights; cached per layout). ``a`` and ``b`` are the least-squares fit of log
seconds per epoch against log F (``b`` = 1 until three trials with F at least 1.5x apart are
measured, then clipped to [0.25, 1.25]); a family's factor is the median of its residuals once
it has two trials (its scheme and norm cost what FLOPs do not count); ``setup`` is the median of
the trials' seconds outside their epochs (build, calibration, saving). A trial measured but not
trained (refused after its calibration steps) counts with its calibration's prediction. Until
one trial is measured there is no prediction: the first candidate is built and calibrated as
always, and the calibration then only confirms the model.

A few calibration steps are weaker evidence than trained epochs (one stall, and a tiny network
seemed to need 15 s an epoch), so until a trial has trained (``TimeModel.trained``) the search
does not give up on the space before its cheapest candidate was calibrated twice itself: a
candidate as cheap as that is built rather than skipped, and drawn when nothing else fits
(``TrialRunner.skip_reason``, ``fitting_params``, ``nothing_fits``).

``cheapest`` finds the space's cheapest candidate by coordinate descent on the predicted
seconds; ``fitting_draw`` draws at random (the non-cost dimensions stay free) and moves the
cost-driving params one by one to the cheapest's values until the draw fits. The search ends
only when the cheapest candidate is predicted not to fit (and, before any trial has trained,
its own two calibrations said so).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import random
import socket
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pdenas.architecture import Architecture
from pdenas.errors import InputError
from pdenas.runs import TrialRecord
from pdenas.train import TrainConfig

__all__ = ["TimeModel", "cheapest", "fitting_draw", "flops_per_image"]

RECENT = 40
"""Measured trials the model is fitted on (the newest: a machine's load changes)."""


@functools.lru_cache(maxsize=512)
def _flops(layout: str, image_size: tuple[int, int]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from pdenas.network import build_model

    arch = Architecture.from_dict(json.loads(layout))
    with torch.random.fork_rng(devices=[]):  # building draws no number from the search's RNG
        try:
            with torch.device("meta"):
                model = build_model(arch).eval()
            x = torch.empty((1, arch.in_channels, *image_size), device="meta")
        except (NotImplementedError, RuntimeError):  # an init that the meta device lacks
            model = build_model(arch).eval()
            x = torch.zeros((1, arch.in_channels, *image_size))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    return int(counter.get_total_flops())


def flops_per_image(arch: Architecture, image_size: Sequence[int]) -> int:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter``), counted without
    allocating the model; the same for every step size (cached per layout)."""
    layout = {**arch.to_dict(), "step_size": 1.0}
    return _flops(json.dumps(layout, sort_keys=True), tuple(int(s) for s in image_size))


@dataclass(frozen=True)
class _Observation:
    family: str
    flops: float
    epoch_seconds: float
    setup: float | None
    trained: bool
    """Measured from trained epochs (else from a calibration's prediction)."""


def _observe(record: TrialRecord) -> _Observation | None:
    """What one record says of this device's speed, or None."""
    flops = (record.cost or {}).get("flops")
    family = (record.architecture or {}).get("family")
    if not flops or not family:
        return None
    epochs = [h.get("seconds") for h in record.history]
    epochs = [s for s in epochs if isinstance(s, (int, float)) and s > 0]
    if epochs:
        setup = None
        if record.status.final and record.seconds:
            setup = max(0.0, float(record.seconds) - sum(epochs))
        return _Observation(family, float(flops), float(statistics.median(epochs)), setup, True)
    predicted = (record.cost or {}).get("predicted_seconds")
    if predicted and record.epochs_planned:  # refused after calibration: its prediction
        return _Observation(family, float(flops), float(predicted) / record.epochs_planned, None,
                            False)
    return None


class TimeModel:
    """Predicts a candidate's trial seconds from records measured on this host and device (see
    the module docstring).

    Args:
        records: The run's trial records (any order).
        device: The device the candidates train on.
        image_size: The data's (height, width).
        host: The host whose trials count (default: this one).
    """

    def __init__(self, records: Sequence[TrialRecord], device: torch.device | str,
                 image_size: Sequence[int], host: str | None = None) -> None:
        host = socket.gethostname() if host is None else host
        mine = [r for r in sorted(records, key=lambda r: r.number)
                if r.device == str(device) and (r.worker or "").rsplit(":", 1)[0] == host]
        observed = [o for o in map(_observe, mine) if o is not None][-RECENT:]
        self.image_size = tuple(int(s) for s in image_size)
        self.count = len(observed)
        self.trained = sum(o.trained for o in observed)
        """Of the ``count`` observations, those from trained epochs (not a calibration alone)."""
        self._measured = collections.Counter((o.family, o.flops) for o in observed)
        self.slope, self.intercept, self.spread = 1.0, 0.0, 0.0
        self.setup, self.family_factor = 0.0, {}
        if observed:
            self._fit(observed)

    def _fit(self, observed: Sequence[_Observation]) -> None:
        xs = [math.log(o.flops) for o in observed]
        ys = [math.log(o.epoch_seconds) for o in observed]
        if len(observed) >= 3 and max(xs) - min(xs) >= math.log(1.5):
            mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
            slope = (sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
                     / sum((x - mean_x) ** 2 for x in xs))
            self.slope = min(1.25, max(0.25, slope))
        self.intercept = statistics.median(y - self.slope * x for x, y in zip(xs, ys))
        residuals: dict[str, list[float]] = {}
        for o, x, y in zip(observed, xs, ys):
            residuals.setdefault(o.family, []).append(y - self.intercept - self.slope * x)
        self.family_factor = {family: math.exp(statistics.median(r))
                              for family, r in residuals.items() if len(r) >= 2}
        left = [y - self.intercept - self.slope * x - math.log(self.family_factor.get(o.family, 1))
                for o, x, y in zip(observed, xs, ys)]
        self.spread = statistics.median(abs(r) for r in left) if len(left) >= 3 else 0.2
        setups = [o.setup for o in observed if o.setup is not None]
        self.setup = statistics.median(setups) if setups else 0.0

    def predict(self, arch: Architecture, train: TrainConfig) -> float | None:
        """The candidate's predicted wall seconds (build, calibration, every epoch), or None
        before any trial was measured."""
        if not self.count:
            return None
        flops = flops_per_image(arch, self.image_size)
        per_epoch = math.exp(self.intercept + self.slope * math.log(max(flops, 1)))
        return self.setup + train.epochs * per_epoch * self.family_factor.get(arch.family, 1.0)

    def measured(self, arch: Architecture) -> int:
        """How many trials of this family and FLOPs (any step size or epochs) were measured."""
        return self._measured[arch.family, float(flops_per_image(arch, self.image_size))]

    def upper(self, arch: Architecture, train: TrainConfig) -> float | None:
        """A prediction the candidate's time stays under in most cases: ``predict`` times the
        model's typical error (at least 5 %)."""
        predicted = self.predict(arch, train)
        return None if predicted is None else predicted * math.exp(max(0.05, self.spread))


Build = Callable[[Mapping[str, Any]], tuple[Architecture, TrainConfig]]
"""Builds the candidate of params (``space.suggest`` on a trial that answers from them)."""


class _Probe:
    """A trial that answers from ``params`` and otherwise with a default (the lowest value, or a
    random one with ``rng``), noting each param asked and the values it could take."""

    def __init__(self, params: Mapping[str, Any], rng: random.Random | None = None) -> None:
        self.given, self.rng = dict(params), rng
        self.params: dict[str, Any] = {}
        self.options: dict[str, list[Any]] = {}

    def _ask(self, name: str, options: list[Any], draw: Callable[[], Any]) -> Any:
        self.options[name] = options
        value = self.given.get(name, draw() if self.rng is not None else options[0])
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._ask(name, list(choices), lambda: self.rng.choice(list(choices)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1,
                    log: bool = False) -> int:
        values = list(range(low, high + 1, step))
        options = sorted({values[0], values[len(values) // 2], values[-1]})
        return self._ask(name, options, lambda: self.rng.choice(values))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        def draw() -> float:
            if log:
                return math.exp(self.rng.uniform(math.log(low), math.log(high)))
            return self.rng.uniform(low, high)

        return self._ask(name, [low, high], draw)


def _priced(build: Callable[[Any], tuple[Architecture, TrainConfig]], model: TimeModel,
            probe: _Probe) -> float:
    try:
        arch, train = build(probe)
    except InputError:  # the params describe no candidate (a layout too deep for the image)
        return math.inf
    return model.predict(arch, train) or 0.0


def cheapest(build: Callable[[Any], tuple[Architecture, TrainConfig]], model: TimeModel
             ) -> tuple[dict[str, Any], float]:
    """The space's cheapest candidate by the model: (its params, its predicted seconds).

    Coordinate descent: from every param at its lowest value, each param in turn takes the
    value (a choice, or an integer range's ends and middle, a float range's ends) that
    predicts the fewest seconds, the others held; two passes.

    Args:
        build: ``space.suggest`` with the data's shape, called with a trial.
        model: A fitted model.
    """
    probe = _Probe({})
    best = _priced(build, model, probe)
    params, options = dict(probe.params), dict(probe.options)
    for _ in range(2):
        for name in list(options):
            for value in options[name]:
                trial = _Probe({**params, name: value})
                seconds = _priced(build, model, trial)
                if seconds < best:
                    best, params = seconds, dict(trial.params)
                    options.update(trial.options)
    return params, best


def fitting_draw(build: Callable[[Any], tuple[Architecture, TrainConfig]], model: TimeModel,
                 seconds: float, seed: int) -> dict[str, Any] | None:
    """Params of a random candidate predicted (``TimeModel.upper``) to fit in ``seconds``, or
    None when even the cheapest candidate does not.

    The draw is random; while it does not fit, its params move one by one (in random order)
    to the cheapest candidate's values, so the dimensions that drive the cost are restricted to
    what fits and the others stay as drawn.
    """
    rng = random.Random(seed)
    low, _ = cheapest(build, model)
    probe = _Probe({}, rng)
    try:
        build(probe)
    except InputError:
        probe = _Probe(low)
    params = dict(probe.params)
    names = [name for name in params if name in low and params[name] != low[name]]
    rng.shuffle(names)
    for name in [None, *names]:
        if name is not None:
            params[name] = low[name]
        trial = _Probe(params)
        try:
            arch, train = build(trial)
        except InputError:
            continue
        upper = model.upper(arch, train)
        if upper is not None and upper <= seconds:
            return dict(trial.params)
    return None
