"""Equivariant linear map: each output irrep block is a weighted sum of the input blocks of the same irrep.

out[e, w, m] = sum over paths into this block of  c_p * sum_u x[e, u, m] W_p[u, w]

Bilinear in (x, W); its two vector-Jacobian products are bilinear too, and each of the three
maps differentiates into the others, so backward and double backward use the same kernels.
Conventions (instructions, weight layout, 'element'/'path' normalisation) are e3nn's `o3.Linear`;
biases are added by `nffk.nn.Linear`, not here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nffk import backends
from nffk.o3 import Irreps
from nffk.ops import _autograd, _outputs, _plans
from nffk.ops.tensor_product import _parse_irreps

# Columns of the int64 path table handed to compiled kernels.
PATH_FIELDS = ("mul_in", "mul_out", "dim", "offset_in", "offset_out", "weight_offset")


@dataclass(frozen=True)
class LinearPath:
    i_in: int
    i_out: int
    mul_in: int
    mul_out: int
    dim: int  # 2l+1 of the shared irrep
    offset_in: int
    offset_out: int
    weight_offset: int
    coefficient: float

    @property
    def weight_numel(self) -> int:
        return self.mul_in * self.mul_out


class LinearPlan:
    def __init__(self, irreps_in, irreps_out, instructions=None, path_normalization: str = "element"):
        self.irreps_in = _parse_irreps(irreps_in, "irreps_in")
        self.irreps_out = _parse_irreps(irreps_out, "irreps_out")
        if path_normalization not in ("element", "path"):
            raise ValueError(f"path_normalization must be 'element' or 'path', got {path_normalization!r}")
        if instructions is None:
            instructions = [(i, o) for i, (_, ir_in) in enumerate(self.irreps_in)
                            for o, (_, ir_out) in enumerate(self.irreps_out) if ir_in == ir_out]
        instructions = [self._check(k, ins) for k, ins in enumerate(instructions)]

        def fan_in(i_in, i_out) -> int:
            # e3nn: 'element' sums the multiplicities of all inputs of this output,
            # 'path' counts this path's multiplicity once per path into the output.
            if path_normalization == "element":
                return sum(self.irreps_in[i].mul for i, o in instructions if o == i_out)
            return self.irreps_in[i_in].mul * sum(1 for _, o in instructions if o == i_out)

        offsets_in = _offsets(self.irreps_in)
        offsets_out = _offsets(self.irreps_out)
        self.paths, weight_offset = [], 0
        for i_in, i_out in instructions:
            (mul_in, ir), mul_out = self.irreps_in[i_in], self.irreps_out[i_out].mul
            x = fan_in(i_in, i_out)
            self.paths.append(LinearPath(i_in, i_out, mul_in, mul_out, ir.dim, offsets_in[i_in], offsets_out[i_out],
                                         weight_offset, 1.0 / math.sqrt(x) if x > 0 else 1.0))
            weight_offset += mul_in * mul_out
        self.instructions = instructions
        self.weight_numel = weight_offset
        self.dim_in, self.dim_out = self.irreps_in.dim, self.irreps_out.dim
        self._tables = {}
        self.id = _plans.register(self)

    def _check(self, k, ins) -> tuple:
        ins = tuple(ins)
        if len(ins) != 2:
            raise ValueError(f"instructions[{k}] must be (i_in, i_out), got {ins!r}")
        i_in, i_out = ins
        for name, i, irreps in (("i_in", i_in, self.irreps_in), ("i_out", i_out, self.irreps_out)):
            if not isinstance(i, int) or not 0 <= i < len(irreps):
                raise ValueError(f"instructions[{k}]: {name}={i!r} is not an index of {irreps}")
        if self.irreps_in[i_in].ir != self.irreps_out[i_out].ir:
            raise ValueError(f"instructions[{k}]: {self.irreps_in[i_in].ir} cannot map linearly to "
                             f"{self.irreps_out[i_out].ir} (equivariance needs the same irrep)")
        return i_in, i_out

    @property
    def flops_per_element(self) -> int:
        return sum(2 * p.mul_in * p.mul_out * p.dim for p in self.paths)

    def bytes_per_element(self, dtype=torch.float32, shared_weights=True) -> int:
        values = self.dim_in + self.dim_out + (0 if shared_weights else self.weight_numel)
        return values * torch.empty((), dtype=dtype).element_size()

    def kernel_tables(self, device, dtype) -> dict:
        key = (torch.device(device), dtype)
        if key not in self._tables:
            rows = [[p.mul_in, p.mul_out, p.dim, p.offset_in, p.offset_out, p.weight_offset] for p in self.paths]
            self._tables[key] = {
                "paths": torch.tensor(rows, dtype=torch.int64).reshape(-1, len(PATH_FIELDS)).to(device),
                "coefficients": torch.tensor([p.coefficient for p in self.paths], dtype=torch.float64)
                .to(device=device, dtype=dtype),
            }
        return self._tables[key]

    def __repr__(self) -> str:
        return f"LinearPlan({self.irreps_in} -> {self.irreps_out} | {len(self.paths)} paths | {self.weight_numel} weights)"


def _offsets(irreps: Irreps) -> list:
    offsets, total = [], 0
    for mul, ir in irreps:
        offsets.append(total)
        total += mul * ir.dim
    return offsets


def _in_block(p: LinearPath, t: torch.Tensor) -> torch.Tensor:
    return t[:, p.offset_in:p.offset_in + p.mul_in * p.dim].view(t.shape[0], p.mul_in, p.dim)


def _out_block(p: LinearPath, t: torch.Tensor) -> torch.Tensor:
    return t[:, p.offset_out:p.offset_out + p.mul_out * p.dim].view(t.shape[0], p.mul_out, p.dim)


def _weight_block(p: LinearPath, w: torch.Tensor) -> torch.Tensor:
    """[u, w] (shared) or [e, u, w] view of this path's weights."""
    block = w[..., p.weight_offset:p.weight_offset + p.weight_numel]
    return block.reshape(*block.shape[:-1], p.mul_in, p.mul_out)


class ReferenceKernels:
    """Pure-torch Linear: one batched matrix product per path."""

    @staticmethod
    def forward(plan, x, w):
        out = x.new_zeros(x.shape[0], plan.dim_out)
        for p in plan.paths:
            equation = "eum,uw->ewm" if w.dim() == 1 else "eum,euw->ewm"
            _out_block(p, out).add_(torch.einsum(equation, _in_block(p, x), _weight_block(p, w)), alpha=p.coefficient)
        return out

    @staticmethod
    def vjp_x(plan, g, w):
        out = g.new_zeros(g.shape[0], plan.dim_in)
        for p in plan.paths:
            equation = "ewm,uw->eum" if w.dim() == 1 else "ewm,euw->eum"
            _in_block(p, out).add_(torch.einsum(equation, _out_block(p, g), _weight_block(p, w)), alpha=p.coefficient)
        return out

    @staticmethod
    def vjp_w(plan, x, g, shared):
        out = x.new_zeros(plan.weight_numel) if shared else x.new_zeros(x.shape[0], plan.weight_numel)
        for p in plan.paths:
            equation = "eum,ewm->uw" if shared else "eum,ewm->euw"
            _weight_block(p, out).add_(torch.einsum(equation, _in_block(p, x), _out_block(p, g)), alpha=p.coefficient)
        return out


class CpuKernels:
    """The three kernels of the cpu backend (csrc/cpu/linear.cpp), float32 and float64."""

    @staticmethod
    def _run(kernel, plan, a, b, shape):
        tables = plan.kernel_tables(a.device, a.dtype)
        out = _outputs.new(shape, a)
        kernel(a.contiguous(), b.contiguous(), tables["paths"], tables["coefficients"], out)
        return out

    @staticmethod
    def forward(plan, x, w):
        return CpuKernels._run(torch.ops.nffk_C.linear_forward, plan, x, w, (x.shape[0], plan.dim_out))

    @staticmethod
    def vjp_x(plan, g, w):
        return CpuKernels._run(torch.ops.nffk_C.linear_vjp_x, plan, g, w, (g.shape[0], plan.dim_in))

    @staticmethod
    def vjp_w(plan, x, g, shared):
        shape = (plan.weight_numel,) if shared else (x.shape[0], plan.weight_numel)
        return CpuKernels._run(torch.ops.nffk_C.linear_vjp_w, plan, x, g, shape)


CPU_DTYPES = (torch.float32, torch.float64)
KERNELS = {"reference": ReferenceKernels, "cpu": CpuKernels}
SUPPORTS = {"reference": lambda plan: True, "cpu": lambda plan: True}  # resolve checks the extension
DTYPES = {"cpu": CPU_DTYPES}


def implemented_backends(plan: LinearPlan, dtype: torch.dtype | None = None) -> tuple:
    """Backends that implement this plan (and, if given, compute in this dtype)."""
    return backends.implemented_by("linear", SUPPORTS, DTYPES, plan, dtype)


@torch.library.custom_op("nffk::linear_forward", mutates_args=())
def _linear_forward(x: torch.Tensor, w: torch.Tensor, plan_id: int, backend: str) -> torch.Tensor:
    return KERNELS[backend].forward(_plans.get(plan_id), x, w)


@torch.library.custom_op("nffk::linear_vjp_x", mutates_args=())
def _linear_vjp_x(g: torch.Tensor, w: torch.Tensor, plan_id: int, backend: str) -> torch.Tensor:
    return KERNELS[backend].vjp_x(_plans.get(plan_id), g, w)


@torch.library.custom_op("nffk::linear_vjp_w", mutates_args=())
def _linear_vjp_w(x: torch.Tensor, g: torch.Tensor, plan_id: int, backend: str, shared: bool) -> torch.Tensor:
    return KERNELS[backend].vjp_w(_plans.get(plan_id), x, g, shared)


@_linear_forward.register_fake
def _(x, w, plan_id, backend):
    return x.new_empty(x.shape[0], _plans.get(plan_id).dim_out)


@_linear_vjp_x.register_fake
def _(g, w, plan_id, backend):
    return g.new_empty(g.shape[0], _plans.get(plan_id).dim_in)


@_linear_vjp_w.register_fake
def _(x, g, plan_id, backend, shared):
    numel = _plans.get(plan_id).weight_numel
    return x.new_empty(numel) if shared else x.new_empty(x.shape[0], numel)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:2])
    ctx.plan_id, ctx.backend = inputs[2], inputs[3]


L, LX, LW = torch.ops.nffk.linear_forward, torch.ops.nffk.linear_vjp_x, torch.ops.nffk.linear_vjp_w


def _backward_forward(ctx, g):
    x, w = ctx.saved_tensors
    need = _autograd.wanted(ctx, 2)
    return (LX(g, w, ctx.plan_id, ctx.backend) if need[0] else None,
            LW(x, g, ctx.plan_id, ctx.backend, w.dim() == 1) if need[1] else None, None, None)


def _backward_vjp_x(ctx, h):
    # <h, LX(g, w)> = <g, L(h, w)>
    g, w = ctx.saved_tensors
    need = _autograd.wanted(ctx, 2)
    return (L(h, w, ctx.plan_id, ctx.backend) if need[0] else None,
            LW(h, g, ctx.plan_id, ctx.backend, w.dim() == 1) if need[1] else None, None, None)


def _backward_vjp_w(ctx, h):
    # <h, LW(x, g)> = <g, L(x, h)>; h has the weight's shape.
    x, g = ctx.saved_tensors
    need = _autograd.wanted(ctx, 2)
    return (LX(g, h, ctx.plan_id, ctx.backend) if need[0] else None,
            L(x, h, ctx.plan_id, ctx.backend) if need[1] else None, None, None, None)


_linear_forward.register_autograd(_backward_forward, setup_context=_save)
_linear_vjp_x.register_autograd(_backward_vjp_x, setup_context=_save)
_linear_vjp_w.register_autograd(_backward_vjp_w, setup_context=_save)


def linear(x: torch.Tensor, weight: torch.Tensor, plan: LinearPlan, backend: str = "auto") -> torch.Tensor:
    """out[..., irreps_out.dim] from x[..., irreps_in.dim]; weight [weight_numel] or [..., weight_numel]."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] != plan.dim_in or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating tensor of shape [..., {plan.dim_in}] for irreps {plan.irreps_in}, "
                         f"got {shape}")
    if weight.dim() == 0 or weight.shape[-1] != plan.weight_numel:
        raise ValueError(f"weight must have shape [{plan.weight_numel}] (shared) or [..., {plan.weight_numel}], "
                         f"got {tuple(weight.shape)}")
    if weight.dtype != x.dtype or weight.device != x.device:
        raise ValueError(f"weight must match x's dtype and device ({x.dtype}, {x.device}), "
                         f"got {weight.dtype} on {weight.device}")
    shared = weight.dim() == 1
    try:
        batch_shape = x.shape[:-1] if shared else torch.broadcast_shapes(x.shape[:-1], weight.shape[:-1])
    except RuntimeError:
        raise ValueError(f"batch shapes of x {tuple(x.shape[:-1])} and weight {tuple(weight.shape[:-1])} "
                         "do not broadcast") from None
    elements = math.prod(batch_shape)
    xf = x.expand(*batch_shape, plan.dim_in).reshape(elements, plan.dim_in).contiguous()
    wf = weight.contiguous() if shared else \
        weight.expand(*batch_shape, plan.weight_numel).reshape(elements, plan.weight_numel).contiguous()
    backends.check_dtype("linear", backend, x.dtype, DTYPES)
    chosen = backends.resolve("linear", backend, x.device, implemented_backends(plan, x.dtype))
    if _autograd.direct_call_is_safe(xf, wf):
        out = KERNELS[chosen].forward(plan, xf, wf)
    else:
        out = torch.ops.nffk.linear_forward(xf, wf, plan.id, chosen)
    return out.reshape(*batch_shape, plan.dim_out)
