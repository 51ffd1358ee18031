"""The whole network: opening layer -> units and connectors -> global pooling -> classifier.

Layout of the paper (Ruthotto & Haber 2018): a 3x3 opening convolution with batch norm and ReLU (stride 1 as
in the paper; ``Architecture.opening_stride`` 2 halves the resolution there); after every
unit a 1x1 connector (batch norm, ReLU) that changes the width and halves the resolution with 2x2
average pooling, except after the last unit, where global average pooling follows; then a
linear classifier with bias.

``Architecture.layer_init`` says how the opening, connectors and classifier start (PyTorch's
defaults, or the authors' ``cnnDriver.m``: ``meganet_init_``) and ``Architecture.bn_eps`` sets
the eps of every batch norm; the units' own weights are drawn by their family.
"""

from __future__ import annotations

import torch
from torch import nn

from pdenas.architecture import Architecture
from pdenas.families import PDEUnit, build_unit
from pdenas.families._layers import init_kernel_

__all__ = ["PDENet", "build_model", "Connector", "meganet_init_"]

CLASSIFIER_STD = 0.1
"""Std of the authors' classifier weights and bias (``cnnDriver.m``: ``W = 0.1 * randn``)."""
CLASSIFIER_CLIP = 0.2
"""Where the authors clip the drawn classifier weights and bias (``min(max(W, -0.2), 0.2)``)."""


class Connector(nn.Sequential):
    """1x1 convolution without bias, batch norm, ReLU and (optionally) 2x2 average pooling.

    The pooling uses ``ceil_mode``, so odd sides round up and a 1x1 map stays 1x1.
    """

    def __init__(self, in_channels: int, out_channels: int, pool: bool) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.AvgPool2d(2, ceil_mode=True))
        super().__init__(*layers)


class PDENet(nn.Module):
    """A PDE-motivated residual network for image classification (logits out)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        c = arch.widths
        self.opening = nn.Sequential(
            nn.Conv2d(arch.in_channels, c[0], 3, stride=arch.opening_stride, padding=1, bias=False),
            nn.BatchNorm2d(c[0]),
            nn.ReLU(inplace=True),
        )
        options = {"norm": arch.norm, "activation": arch.activation,
                   "reversible": arch.reversible, "init": arch.init, "start": arch.start}
        self.units = nn.ModuleList(
            build_unit(arch.family, c[k], n, arch.step_size, **options)
            for k, n in enumerate(arch.depths)
        )
        last = arch.num_units - 1
        self.connectors = nn.ModuleList(
            Connector(c[k], c[k + 1], pool=k < last) for k in range(arch.num_units)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c[-1], arch.num_classes)
        if arch.layer_init == "meganet":
            meganet_init_(self)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eps = arch.bn_eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not torch.jit.is_scripting() and not tracing:
            self.arch.check_input(x.shape[-2], x.shape[-1])
        x = self.opening(x)
        for unit, connector in zip(self.units, self.connectors):
            x = connector(unit(x))
        return self.classifier(torch.flatten(self.pool(x), 1))

    def set_step_size(self, step_size: float) -> None:
        """Changes h of every unit (the weights stay)."""
        for unit in self.pde_units():
            unit.step_size = step_size

    def pde_units(self) -> list[PDEUnit]:
        """The PDE units in order."""
        return list(self.units)


def meganet_init_(model: PDENet) -> PDENet:
    """Redraws the opening, connector and classifier weights in place as the authors' code does.

    ``cnnDriver.m`` (Meganet.m) starts the opening's 3x3 and each connector's 1x1 kernel from
    ``convKernel.initTheta``, as the units' kernels (``init_kernel_``: normal with std
    ``sqrt(2 / (k c_in))``, truncated at 2 std), their batch norms at scale 1 and shift 0
    (PyTorch's too), and the classifier's weights and bias, one matrix of classes x (c + 1),
    as ``0.1 N(0, 1)`` clipped to [-0.2, 0.2]. Draws from the global random generator.
    """
    with torch.no_grad():
        for conv in (model.opening[0], *(connector[0] for connector in model.connectors)):
            init_kernel_(conv.weight)
        for tensor in (model.classifier.weight, model.classifier.bias):
            tensor.normal_(0.0, CLASSIFIER_STD).clamp_(-CLASSIFIER_CLIP, CLASSIFIER_CLIP)
    return model


def build_model(arch: Architecture) -> PDENet:
    """Builds the network an ``Architecture`` describes."""
    if not isinstance(arch, Architecture):
        raise TypeError(f"build_model: expected an Architecture, got {type(arch).__name__}")
    return PDENet(arch)
