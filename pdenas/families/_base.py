"""The interface every PDE family implements, and the reversible backward pass they share.

Lifecycle of a unit:

1. ``build_unit`` looks the family up in the registry and constructs it with a width, a depth
   (number of time steps) and a step size h. The weights are drawn before h is known and do not
   depend on it; ``unit.step_size`` may be changed later (a search over h reuses one init).
   With ``init="repeat"`` (the default, as every integrator's ``initTheta`` in Meganet.m does
   with ``repmat``) one set of step weights is drawn and copied to every time step, so the
   smoothness-in-time penalty starts at 0; ``init="independent"`` draws each step afresh.
2. ``forward(x)`` turns the input into the scheme's state (``init_state``), applies ``step`` once
   per time step with that step's own weights, and maps the last state back to feature maps
   (``output``). A family writes only these three methods (plus ``inverse_step`` when its
   scheme is reversible, and ``step_bound`` for its stability bound).
3. In reversible mode (training only), the time loop runs without storing intermediate states;
   the backward pass rebuilds them from the last state with ``inverse_step``, one step at a
   time, and back-propagates through that step alone. Activation memory then does not grow with
   the depth (it holds the last state only); a training step costs about 1.7x the plain one.
   The backward pass recomputes under the forward's autocast state.

Float32 drift (benchmarks/reversible_drift.md, docs/reversible.md): rebuilding the states
backwards is exact only in exact arithmetic. In float32, reversible gradients stay within 1e-5
(relative) of plain autograd's up to 30 steps per unit for hamiltonian (h = 1 and h = 0.1) and
second_order at h = 0.1, and up to 10 steps for second_order at h = 1; the paper's 3 steps are
far inside. At 100 steps and h = 1 it reaches up to 1.3e-2, at 300 steps up to 6e-2.
Deeper units: use float64, a smaller h, or more units of fewer steps.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from pdenas.errors import InputError

__all__ = ["INITS", "PDEUnit", "STARTS", "State"]

State = tuple[torch.Tensor, ...]

INITS = ("repeat", "independent")
"""How the time steps of a unit start: "repeat" (one draw copied to every step, Meganet.m's
``initTheta``) or "independent" (one draw per step)."""

STARTS = ("rest", "half_step")
"""How a unit may take its first time step: "rest" (the scheme as it is; for leapfrog
``Y_{-1} = Y_0``, Meganet.m's ``LeapFrogNN``) or "half_step" (leapfrog's second-order start,
``Y_1 = Y_0 + h² F / 2``; second_order only). A family lists the ones it has in ``starts``."""


class PDEUnit(nn.Module):
    """One PDE unit: ``depth`` time steps of size ``step_size`` at fixed width.

    Subclasses set ``reversible_scheme`` (and ``default_norm`` where it is not "tv"), build their
    per-step layers with ``per_step`` and implement ``init_state``, ``step``, ``output``,
    ``step_bound`` and, for reversible schemes, ``inverse_step``.

    Args:
        width: Channels in and out.
        depth: Number of time steps, each with its own weights.
        step_size: The time step h (> 0).
        norm: Normalisation inside the layer: "tv", "batch" or "none"; None means the family's
            ``default_norm``.
        activation: Activation name.
        init: "repeat" (every step starts from the same weights; the default) or "independent"
            (see ``INITS``).
        start: How the first time step is taken: one of the family's ``starts`` ("rest", the
            default; "half_step" for second_order, see ``STARTS``).
        reversible: Recompute states in the backward pass instead of storing them
            (reversible schemes only, not with batch norm). Safe in float32 up to 30 steps
            per unit (hamiltonian; second_order with h <= 0.1) or 10 steps (second_order,
            h = 1): see the module docstring.
    """

    reversible_scheme: ClassVar[bool] = False
    """Whether the scheme can be run backwards (``inverse_step``)."""
    output_holds_state: ClassVar[bool] = True
    """Whether ``init_state(output)`` is the last state (not for leapfrog: it needs Y_{n-1})."""
    width_multiple: ClassVar[int] = 1
    """Unit widths must be multiples of this (2 for schemes that split the channels in halves)."""
    family_name: ClassVar[str]
    """The registry name (set by ``register_family``)."""
    starts: ClassVar[tuple[str, ...]] = ("rest",)
    """The first-step rules the scheme has (``STARTS``); one-step schemes have "rest" only."""

    # --- what is true of the family: asked by Architecture and the search space -------------
    @classmethod
    def option_problems(cls, *, width: int, depth: int, norm: str = "tv",
                        activation: str = "relu", reversible: bool = False,
                        init: str = "repeat", start: str = "rest") -> list[tuple[str, str, str]]:
        """What this family refuses in a unit's options, as (option, problem, allowed) triples.

        A family with rules of its own extends the list (call the base first). ``Architecture``
        and the search space ask this before anything is built; ``__init__`` raises the first.
        """
        from pdenas.families._layers import ACTIVATIONS, NORMS

        problems = []
        if width < 1 or width % cls.width_multiple:
            allowed = ("an integer >= 1" if cls.width_multiple == 1 else
                       f"a multiple of {cls.width_multiple} for the {cls._name()} family")
            problems.append(("width", f"got {width}", allowed))
        if depth < 1:
            problems.append(("depth", f"got {depth}", "an integer >= 1"))
        if norm not in NORMS:
            problems.append(("norm", f"unknown {norm!r}", ", ".join(NORMS)))
        if activation not in ACTIVATIONS:
            problems.append(("activation", f"unknown {activation!r}", ", ".join(sorted(ACTIVATIONS))))
        if init not in INITS:
            problems.append(("init", f"unknown {init!r}", ", ".join(INITS)))
        if start not in cls.starts:
            problem = (f"the {cls._name()} scheme has no {start!r} start" if start in STARTS
                       else f"unknown {start!r}")
            problems.append(("start", problem, ", ".join(cls.starts)))
        if reversible and not cls.reversible_scheme:
            from pdenas.families._registry import get_family, list_families

            schemes = [f for f in list_families() if get_family(f).reversible_scheme]
            problems.append(("reversible", f"the {cls._name()} scheme is not reversible",
                             "with " + ", ".join(schemes)))
        elif reversible and norm == "batch":
            problems.append(("reversible", "batch norm breaks exact recomputation",
                             "norm 'tv' or 'none'"))
        return problems

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raises ``ValueError`` (``option: problem; allowed: ...``) for the first problem."""
        problems = cls.option_problems(**options)
        if problems:
            key, problem, allowed = problems[0]
            raise InputError(f"{key}: {problem}; allowed: {allowed}")

    @classmethod
    def round_width(cls, width: int) -> int:
        """``width`` rounded up to the family's width multiple (what the search space asks)."""
        return max(1, -(-int(width) // cls.width_multiple) * cls.width_multiple)

    @classmethod
    def _name(cls) -> str:
        return getattr(cls, "family_name", cls.__name__)
    default_norm: ClassVar[str] = "tv"
    """The normalisation used when none is asked for: the paper's TV normalisation."""

    def __init__(
        self,
        width: int,
        depth: int,
        step_size: float,
        *,
        norm: str | None = None,
        activation: str = "relu",
        reversible: bool = False,
        init: str = "repeat",
        start: str = "rest",
    ) -> None:
        super().__init__()
        if norm is None:
            norm = self.default_norm
        type(self).check_options(width=width, depth=depth, norm=norm, activation=activation,
                                 reversible=reversible, init=init, start=start)
        self.width = width
        self.depth = depth
        self.norm_name = norm
        self.activation_name = activation
        self.reversible = reversible
        self.init = init
        self.start = start
        self.step_size = step_size

    @property
    def step_size(self) -> float:
        """The time step h; may be changed after construction."""
        return self._step_size

    @step_size.setter
    def step_size(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value) or value <= 0:
            raise InputError(f"step_size: must be a finite number > 0, got {value}")
        self._step_size = value

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, depth={self.depth}, step_size={self.step_size:g}, "
            f"norm={self.norm_name!r}, reversible={self.reversible}, init={self.init!r}"
        )

    def per_step(self, make: Callable[[], nn.Module]) -> nn.ModuleList:
        """``depth`` layers for the time steps, following ``init``.

        "repeat" calls ``make`` once and gives every step a copy (own parameters, equal values:
        ``θ_0 = θ_1 = ... = θ_{n-1}``); "independent" calls it once per step.
        """
        if self.init == "repeat":
            first = make()
            return nn.ModuleList([first] + [copy.deepcopy(first) for _ in range(self.depth - 1)])
        return nn.ModuleList(make() for _ in range(self.depth))

    # --- the scheme: what a family writes -------------------------------------------------
    def init_state(self, x: torch.Tensor) -> State:
        """Maps the unit's input to the scheme's state."""
        raise NotImplementedError

    def step(self, j: int, state: State) -> State:
        """Advances the state by one time step with the weights of step j."""
        raise NotImplementedError

    def inverse_step(self, j: int, state: State) -> State:
        """Undoes ``step(j, ·)`` exactly (in exact arithmetic); reversible schemes only."""
        raise NotImplementedError(f"{type(self).__name__} is not reversible")

    def output(self, state: State) -> torch.Tensor:
        """Maps the last state back to feature maps."""
        return state[0]

    def step_layers(self, j: int) -> Sequence[nn.Module]:
        """The modules whose weights step j uses."""
        raise NotImplementedError

    def step_bound(self, norms: Sequence[float]) -> float:
        """The largest stable h for one step, given the ``jacobian_bound`` of its layers."""
        raise NotImplementedError

    # --- shared machinery ------------------------------------------------------------------
    def integrate(self, x: torch.Tensor) -> torch.Tensor:
        """Runs all time steps with ordinary autograd."""
        state = self.init_state(x)
        for j in range(self.depth):
            state = self.step(j, state)
        return self.output(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reversible and self.training and torch.is_grad_enabled():
            params = tuple(p for p in self.parameters() if p.requires_grad)
            return _ReversibleIntegration.apply(self, x, *params)
        return self.integrate(x)

    def reverse(self, y: torch.Tensor, last_state: State | None = None) -> State:
        """Runs the scheme backwards from a last state to the first; reversible schemes only.

        Args:
            y: The unit's output.
            last_state: The scheme's last state; needed where the output alone does not hold
                it (second_order: ``(Y_{n-1}, Y_n)``).

        Raises:
            ValueError: If the last state is needed and not given.
        """
        if last_state is None and not self.output_holds_state:
            raise InputError(
                f"{type(self).__name__}.reverse needs last_state: its output Y_n alone does "
                "not determine the previous step"
            )
        state = last_state if last_state is not None else self.init_state(y)
        for j in reversed(range(self.depth)):
            state = self.inverse_step(j, state)
        return state

    def spectral_norms(self) -> list[list[float]]:
        """Power-iteration estimates of ``||K||₂`` for each layer of each time step."""
        return [[layer.spectral_norm() for layer in self.step_layers(j)] for j in range(self.depth)]

    def max_stable_step(self, spectral_norms: Sequence[Sequence[float]] | None = None) -> float:
        """The linearised ``||K||`` bound on h for this unit's scheme (the smallest over its steps).

        It takes the normalisation's Jacobian as the identity, so it is a bound for norm "none"
        with non-negative scales only; under TV (whose Jacobian can amplify by up to
        ``1 / sqrt(eps)``) or batch norm it bounds nothing (PAPER.md), and a unit's stability
        is its gain (``families.stability_report``).

        Args:
            spectral_norms: What ``spectral_norms()`` returned, so the power iterations are not
                run again; None computes them.
        """
        if spectral_norms is None:
            spectral_norms = self.spectral_norms()
        bounds = []
        for j, step_norms in enumerate(spectral_norms):
            layers = zip(self.step_layers(j), step_norms)
            bounds.append(self.step_bound([layer.jacobian_bound(n) for layer, n in layers]))
        return min(bounds)

    # --- resampling in time (multilevel training, ``pdenas.deepen``) ----------------------
    def unit_options(self) -> dict[str, object]:
        """The keyword options that rebuild this unit with another depth and step size; a
        family whose constructor takes more options overrides this."""
        return {"norm": self.norm_name, "activation": self.activation_name,
                "reversible": self.reversible, "init": self.init, "start": self.start}

    def resample(self, depth: int) -> PDEUnit:
        """The same dynamics on ``depth`` steps: a new unit over the same time ``T = n h``.

        Step size ``h' = h n / depth``; new step i takes the weights of step
        ``⌊i n / depth⌋`` (``θ(t)`` stays piecewise constant and unchanged); everything outside
        ``step_layers`` is copied (``families/_refine.py``). A family whose weights are not
        per-step modules overrides this.
        """
        from pdenas.families._refine import resample_unit

        return resample_unit(self, depth)

    def refine(self, factor: int = 2) -> PDEUnit:
        """``factor`` times the steps at ``h / factor``, each step repeated ``factor`` times:
        a finer discretisation of the same ODE (``resample(depth * factor)``)."""
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise InputError(f"factor: must be an integer >= 1, got {factor!r}")
        return self.resample(self.depth * factor)


class _ReversibleIntegration(torch.autograd.Function):
    """Integrates a unit without storing its states; rebuilds them backwards in ``backward``."""

    @staticmethod
    def forward(ctx, unit: PDEUnit, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            state = unit.init_state(x)
            for j in range(unit.depth):
                state = unit.step(j, state)
            out = unit.output(state).clone()
        ctx.unit = unit
        ctx.params = params
        # Recompute under the forward's autocast state, or the rebuilt states and the gradients
        # would come from other arithmetic than the forward pass (several % off under bf16).
        device_type = x.device.type
        ctx.autocast = (
            device_type,
            torch.get_autocast_dtype(device_type),
            torch.is_autocast_enabled(device_type),
        )
        ctx.input_like = torch.zeros((), dtype=x.dtype, device=x.device).expand_as(x)
        ctx.save_for_backward(*state)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        unit: PDEUnit = ctx.unit
        params: tuple[torch.Tensor, ...] = ctx.params
        index = {id(p): i for i, p in enumerate(params)}
        grad_params: list[torch.Tensor | None] = [None] * len(params)
        state = tuple(s.detach() for s in ctx.saved_tensors)
        device_type, dtype, enabled = ctx.autocast

        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            grad_state = _grad_through(lambda s: (unit.output(s),), state, (grad_out,), ())[0]
            for j in reversed(range(unit.depth)):
                with torch.no_grad():
                    previous = unit.inverse_step(j, state)
                step_params = [
                    p
                    for layer in unit.step_layers(j)
                    for p in layer.parameters()
                    if p.requires_grad
                ]
                grad_state, grads = _grad_through(
                    lambda s, j=j: unit.step(j, s), previous, grad_state, step_params
                )
                for p, g in zip(step_params, grads):
                    i = index[id(p)]
                    grad_params[i] = g if grad_params[i] is None else grad_params[i] + g
                state = previous

            # init_state only splits or copies its input, so its gradient does not depend on x.
            grad_x = _grad_through(
                lambda s: unit.init_state(s[0]), (ctx.input_like,), grad_state, ()
            )
        return (None, grad_x[0][0], *grad_params)


def _grad_through(fn, inputs: State, grad_outputs: State, params: Sequence[torch.Tensor]):
    """Back-propagates ``grad_outputs`` through ``fn(inputs)``; returns input and param grads."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_(True) for t in inputs)
        outputs = fn(leaves)
        # An output that is an input passed through unchanged still needs a graph node.
        outputs = tuple(o.view_as(o) for o in outputs)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None]
        grads = torch.autograd.grad(
            [o for o, _ in pairs],
            list(leaves) + list(params),
            [g for _, g in pairs],
            allow_unused=True,
        )
    targets = list(leaves) + list(params)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(targets, grads)]
    return tuple(grads[: len(leaves)]), grads[len(leaves) :]
