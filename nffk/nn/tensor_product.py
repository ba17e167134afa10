"""Tensor-product modules with e3nn's constructors, parameters and outputs."""
from __future__ import annotations

import math

import torch

from nffk import backends
from nffk.o3 import Irreps
from nffk.ops.tensor_product import TensorProductPlan, tensor_product


def _weight_flags(shared_weights, internal_weights, has_weights: bool) -> tuple:
    """e3nn's defaults: shared and internal unless told otherwise; internal implies shared."""
    if shared_weights is False and internal_weights is None:
        internal_weights = False
    if shared_weights is None:
        shared_weights = True
    if internal_weights is None:
        internal_weights = shared_weights and has_weights
    if internal_weights and not shared_weights:
        raise ValueError("internal_weights=True requires shared_weights=True (one set of weights for the batch)")
    return bool(shared_weights), bool(internal_weights)


class TensorProduct(torch.nn.Module):
    r"""Drop-in for ``e3nn.o3.TensorProduct``: same arguments, same weight layout, same outputs.

    ``instructions`` are ``(i_in1, i_in2, i_out, connection_mode, has_weight[, path_weight])``
    with connection modes ``uvw``, ``uvu``, ``uvv``, ``uuw``, ``uuu``, ``uvuv``.
    ``backend`` picks the kernels ("auto", "reference", "cpu", "cuda", "triton").
    """

    def __init__(self, irreps_in1, irreps_in2, irreps_out, instructions, in1_var=None, in2_var=None, out_var=None,
                 irrep_normalization: str | None = None, path_normalization: str | None = None,
                 internal_weights: bool | None = None, shared_weights: bool | None = None, backend: str = "auto"):
        super().__init__()
        self.plan = TensorProductPlan(irreps_in1, irreps_in2, irreps_out, instructions, in1_var, in2_var, out_var,
                                      irrep_normalization, path_normalization)
        self.backend = backends.check_name(backend)
        self.irreps_in1, self.irreps_in2, self.irreps_out = (self.plan.irreps_in1, self.plan.irreps_in2,
                                                             self.plan.irreps_out)
        self.instructions = self.plan.instructions
        self.weight_numel = self.plan.weight_numel
        self.shared_weights, self.internal_weights = _weight_flags(
            shared_weights, internal_weights, any(i.has_weight for i in self.instructions))
        if self.internal_weights and self.weight_numel > 0:
            self.weight = torch.nn.Parameter(torch.randn(self.weight_numel))
        else:
            self.register_buffer("weight", torch.Tensor())
        # e3nn keeps this buffer (1 where some path writes the output); kept so state_dicts match.
        mask = [torch.full((mul * ir.dim,), float(any(i.i_out == k and i.path_weight != 0 and 0 not in i.path_shape
                                                     for i in self.instructions)))
                for k, (mul, ir) in enumerate(self.irreps_out)]
        self.register_buffer("output_mask", torch.cat(mask) if mask else torch.ones(0))

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None:
            if self.weight_numel > 0 and not self.internal_weights:
                raise ValueError("weight is required: this TensorProduct has no internal weights "
                                 f"(expected [..., {self.weight_numel}])")
            weight = self.weight if self.weight_numel > 0 else None
        elif self.shared_weights and weight.shape != (self.weight_numel,):
            raise ValueError(f"weight must have shape [{self.weight_numel}] (shared_weights=True), "
                             f"got {tuple(weight.shape)}")
        elif not self.shared_weights and (weight.dim() < 2 or weight.shape[-1] != self.weight_numel):
            raise ValueError(f"weight must have shape [..., {self.weight_numel}] with a batch dimension "
                             f"(shared_weights=False), got {tuple(weight.shape)}")
        return tensor_product(x, y, weight, self.plan, self.backend)

    def __repr__(self) -> str:
        paths = sum(math.prod(i.path_shape) for i in self.instructions)
        return (f"{self.__class__.__name__}({self.irreps_in1.simplify()} x {self.irreps_in2.simplify()} -> "
                f"{self.irreps_out.simplify()} | {paths} paths | {self.weight_numel} weights)")


class FullyConnectedTensorProduct(TensorProduct):
    """Every allowed (in1, in2) -> out path, fully mixing channels (`uvw`), as e3nn's."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out, irrep_normalization=None, path_normalization=None,
                 **kwargs):
        irreps_in1, irreps_in2, irreps_out = Irreps(irreps_in1), Irreps(irreps_in2), Irreps(irreps_out)
        instructions = [(i1, i2, i_out, "uvw", True, 1.0)
                        for i1, (_, ir1) in enumerate(irreps_in1)
                        for i2, (_, ir2) in enumerate(irreps_in2)
                        for i_out, (_, ir_out) in enumerate(irreps_out)
                        if ir_out in ir1 * ir2]
        super().__init__(irreps_in1, irreps_in2, irreps_out, instructions, irrep_normalization=irrep_normalization,
                         path_normalization=path_normalization, **kwargs)


def channelwise_instructions(irreps_node, irreps_edge, irreps_out) -> tuple:
    """The NequIP/MACE edge tensor product: each node channel times each edge irrep into every
    allowed output irrep present in `irreps_out` (its multiplicities are ignored), one output
    block per path, sorted by irrep. Returns (irreps_mid, instructions)."""
    wanted = {ir for _, ir in irreps_out}
    mid, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_node):
        for j, (_, ir_edge) in enumerate(irreps_edge):
            for ir_out in ir_in * ir_edge:
                if ir_out in wanted:
                    instructions.append((i, j, len(mid), "uvu", True))
                    mid.append((mul, ir_out))
    irreps_mid, permutation, _ = Irreps(mid).sort()
    return irreps_mid, [(i, j, permutation[k], mode, w) for i, j, k, mode, w in instructions]


class ChannelwiseTensorProduct(TensorProduct):
    """Edge tensor product of NequIP/MACE: node features x edge spherical harmonics, channel-wise
    (`uvu`), with per-edge weights by default (from a radial MLP).

    `irreps_out` names the wanted output irreps (e.g. "0e+1o+2e"; multiplicities are ignored)
    or is an int lmax meaning every irrep up to it, both parities. The actual output irreps
    (one block per path, sorted) are `self.irreps_out`."""

    def __init__(self, irreps_node, irreps_edge, irreps_out, shared_weights: bool = False,
                 internal_weights: bool | None = None, **kwargs):
        irreps_node, irreps_edge = Irreps(irreps_node), Irreps(irreps_edge)
        if isinstance(irreps_out, int):
            irreps_out = Irreps([(1, (l, p)) for l in range(irreps_out + 1) for p in (1, -1)])
        irreps_mid, instructions = channelwise_instructions(irreps_node, irreps_edge, Irreps(irreps_out))
        super().__init__(irreps_node, irreps_edge, irreps_mid, instructions, shared_weights=shared_weights,
                         internal_weights=internal_weights, **kwargs)
