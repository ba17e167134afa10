"""Scalar multilayer perceptron with e3nn's `nn.FullyConnectedNet` constructor, parameters and outputs.

Weights are stored unscaled (standard normal at initialisation) and divided by sqrt(fan_in) in
the forward pass, so every layer keeps unit variance whatever the width: the parametrisation
width-transfer (muP) builds on. Activations are normalised to unit second moment as in e3nn.
"""
from __future__ import annotations

import torch

from nffk.nn.gate import NormalizedActivation


class DenseLayer(torch.nn.Module):
    """x @ (weight / sqrt(fan_in)) [+ bias], then the activation if any (e3nn's `_Layer`)."""

    def __init__(self, h_in: int, h_out: int, act=None, bias: bool = False):
        super().__init__()
        if h_in < 1 or h_out < 1:
            raise ValueError(f"layer sizes must be >= 1, got {h_in} -> {h_out}")
        self.h_in, self.h_out = int(h_in), int(h_out)
        self.weight = torch.nn.Parameter(torch.randn(h_in, h_out))
        self.bias = torch.nn.Parameter(torch.zeros(h_out)) if bias else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x @ (self.weight / self.h_in ** 0.5)
        if self.bias is not None:
            x = x + self.bias
        return x if self.act is None else self.act(x)

    def __repr__(self) -> str:
        act = getattr(getattr(self.act, "act", None), "__name__", None)
        return f"DenseLayer({self.h_in}->{self.h_out}, act={act}, bias={self.bias is not None})"


class FullyConnectedNet(torch.nn.Sequential):
    """Drop-in for ``e3nn.nn.FullyConnectedNet(hs, act)``: layers ``layer0, layer1, ...`` of sizes
    hs[0] -> hs[1] -> ... -> hs[-1], the activation after every layer but the last (unless
    `out_act`). `bias=True` adds zero-initialised biases (not in e3nn; off by default)."""

    def __init__(self, hs, act=None, out_act: bool = False, bias: bool = False):
        super().__init__()
        self.hs = [int(h) for h in hs]
        if len(self.hs) < 2:
            raise ValueError(f"hs must list at least an input and an output size, got {list(hs)}")
        act = None if act is None else NormalizedActivation(act)
        for i, (h1, h2) in enumerate(zip(self.hs, self.hs[1:])):
            last = i == len(self.hs) - 2
            self.add_module(f"layer{i}", DenseLayer(h1, h2, act if (out_act or not last) else None, bias))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}{self.hs}"
