"""Equivariant linear layer with e3nn's `o3.Linear` constructor, parameters and outputs."""
from __future__ import annotations

import torch

from nffk import backends
from nffk.nn.tensor_product import _weight_flags
from nffk.ops.linear import LinearPlan, linear


class Linear(torch.nn.Module):
    """Drop-in for ``e3nn.o3.Linear(irreps_in, irreps_out, ...)``.

    ``biases`` (a bool, or one bool per output irrep) adds a learnable bias to scalar (0e)
    outputs, initialised at zero, stored in ``bias`` as in e3nn."""

    def __init__(self, irreps_in, irreps_out, *, f_in=None, f_out=None, internal_weights: bool | None = None,
                 shared_weights: bool | None = None, instructions=None, biases=False,
                 path_normalization: str = "element", backend: str = "auto"):
        super().__init__()
        if f_in is not None or f_out is not None:
            raise ValueError("f_in/f_out (e3nn's extra weight axes) are not supported by nffk.nn.Linear")
        self.plan = LinearPlan(irreps_in, irreps_out, instructions, path_normalization)
        self.backend = backends.check_name(backend)
        self.irreps_in, self.irreps_out = self.plan.irreps_in, self.plan.irreps_out
        self.instructions = self.plan.instructions
        self.weight_numel = self.plan.weight_numel
        if isinstance(biases, bool):
            biases = [biases and ir.is_scalar() for _, ir in self.irreps_out]
        biases = list(biases)
        if len(biases) != len(self.irreps_out):
            raise ValueError(f"biases must have one entry per output irrep ({len(self.irreps_out)}), got {len(biases)}")
        for b, (_, ir) in zip(biases, self.irreps_out):
            if b and not ir.is_scalar():
                raise ValueError(f"biases: only scalar (0e) outputs can have a bias, not {ir}")
        self.biases = biases
        # Where each bias lands in the output (e3nn's bias layout: biased output blocks in order).
        columns, offset = [], 0
        for b, (mul, ir) in zip(biases, self.irreps_out):
            if b:
                columns.extend(range(offset, offset + mul * ir.dim))
            offset += mul * ir.dim
        self.register_buffer("bias_columns", torch.tensor(columns, dtype=torch.int64), persistent=False)
        self.bias_numel = len(columns)
        self.shared_weights, self.internal_weights = _weight_flags(shared_weights, internal_weights, True)
        if self.internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        if self.internal_weights and self.bias_numel > 0:
            self.bias = torch.nn.Parameter(torch.zeros(self.bias_numel))
        else:
            self.register_buffer("bias", torch.Tensor())
        covered = {o for _, o in self.instructions}
        mask = [torch.full((mul * ir.dim,), float(k in covered or biases[k])) for k, (mul, ir) in
                enumerate(self.irreps_out)]
        self.register_buffer("output_mask", torch.cat(mask) if mask else torch.ones(0))

    def forward(self, features: torch.Tensor, weight: torch.Tensor | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise ValueError(f"weight is required: this Linear has no internal weights "
                                 f"(expected [..., {self.weight_numel}])")
            weight = self.weight
        if bias is None:
            bias = self.bias if self.bias_numel > 0 and self.internal_weights else None
        if self.weight_numel == 0:
            out = features.new_zeros(*features.shape[:-1], self.irreps_out.dim)
        else:
            out = linear(features, weight, self.plan, self.backend)
        if bias is not None and self.bias_numel > 0:
            if bias.shape[-1] != self.bias_numel:
                raise ValueError(f"bias must have last dimension {self.bias_numel}, got {tuple(bias.shape)}")
            out = out.index_add(-1, self.bias_columns, bias.expand(*out.shape[:-1], self.bias_numel))
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.irreps_in} -> {self.irreps_out} | {self.weight_numel} weights)"
