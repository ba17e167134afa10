"""Neighbour-list message passing: out[i] = sum over edges e = (j -> i) of TP(x[j], sh[e], w[e]).

Like the tensor product it is built on, the convolution is trilinear in (node features x,
edge attributes sh, edge weights w), and its vector-Jacobian products are trilinear as well:

    conv(x, sh, w)    [nodes, out]  gather x at senders, tensor product, sum into receivers
    conv_vjp_x(g, ...) [nodes, in1] gather g at receivers, vjp_x1, sum into senders
    conv_vjp_sh(x, g, w) [edges, in2]   per edge, vjp_x2(x[sender], g[receiver], w)
    conv_vjp_w(x, sh, g) [edges, W] or [W]

Each differentiates into the others, so backends implement these four and every derivative
order follows. Edges are sorted by receiver (CSR, `receiver_ptr`); `sender_order` and
`sender_ptr` give the sender-sorted view (the GPU kernels' deterministic vjp_x runs over it; the
cpu one runs in receiver order into per-slab partial sums). `ConvGraph` builds both once per graph.

The reference backend is the unfused gather -> tensor product -> index_add: it materialises
the per-edge tensors that fused kernels avoid.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from nffk import backends
from nffk.ops import _autograd, _outputs, _plans
from nffk.ops.tensor_product import CUDA_DTYPES, cuda_program
from nffk.ops.tensor_product import DTYPES as TP_DTYPES
from nffk.ops.tensor_product import SUPPORTS as TP_SUPPORTS
from nffk.ops.tensor_product import ReferenceKernels as ReferenceTP
from nffk.ops.tensor_product import TensorProductPlan


class ConvGraph(NamedTuple):
    """Edges (senders -> receivers) sorted by receiver, with both CSR views."""
    senders: torch.Tensor  # [E] int64
    receivers: torch.Tensor  # [E] int64, non-decreasing
    receiver_ptr: torch.Tensor  # [N+1]: edges into node i are receiver_ptr[i]:receiver_ptr[i+1]
    sender_order: torch.Tensor  # [E]: edge ids sorted by sender (stable)
    sender_ptr: torch.Tensor  # [N+1]: sender_order[sender_ptr[j]:sender_ptr[j+1]] leave node j

    @staticmethod
    def build(senders: torch.Tensor, receivers: torch.Tensor, num_nodes: int, check: bool = True) -> "ConvGraph":
        for name, index in (("senders", senders), ("receivers", receivers)):
            if index.dim() != 1 or index.dtype != torch.int64:
                raise ValueError(f"{name} must be a 1-D int64 tensor, got {index.dtype} of shape {tuple(index.shape)}")
        if senders.shape != receivers.shape:
            raise ValueError(f"senders {tuple(senders.shape)} and receivers {tuple(receivers.shape)} must match")
        if check and senders.numel():
            low, high = min(int(senders.min()), int(receivers.min())), max(int(senders.max()), int(receivers.max()))
            if low < 0 or high >= num_nodes:
                raise ValueError(f"edge indices must lie in [0, num_nodes={num_nodes}), found [{low}, {high}]")
            if bool((receivers[1:] < receivers[:-1]).any()):
                raise ValueError("edges must be sorted by receiver (nffk.ops.neighbor_list returns them so); "
                                 "sort with torch.sort(receivers, stable=True) and permute every edge tensor")
        counts = lambda index: torch.bincount(index, minlength=num_nodes)  # noqa: E731
        zero = torch.zeros(1, dtype=torch.int64, device=senders.device)
        receiver_ptr = torch.cat([zero, counts(receivers).cumsum(0)])
        sender_order = torch.sort(senders, stable=True).indices
        sender_ptr = torch.cat([zero, counts(senders).cumsum(0)])
        return ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)

    @property
    def num_nodes(self) -> int:
        return self.receiver_ptr.numel() - 1


class ReferenceKernels:
    """Unfused: gather, the reference tensor-product kernels, index_add."""

    @staticmethod
    def forward(plan, x, sh, w, graph, weighted_only):
        messages = ReferenceTP.forward(plan, x[graph.senders], sh, w, weighted_only)
        return x.new_zeros(x.shape[0], plan.dim_out).index_add_(0, graph.receivers, messages)

    @staticmethod
    def vjp_x(plan, g, sh, w, graph, weighted_only):
        per_edge = ReferenceTP.vjp_x1(plan, g[graph.receivers], sh, w, weighted_only)
        return g.new_zeros(g.shape[0], plan.dim_in1).index_add_(0, graph.senders, per_edge)

    @staticmethod
    def vjp_sh(plan, x, g, w, graph, weighted_only):
        return ReferenceTP.vjp_x2(plan, x[graph.senders], g[graph.receivers], w, weighted_only)

    @staticmethod
    def vjp_w(plan, x, sh, g, graph, shared):
        return ReferenceTP.vjp_w(plan, x[graph.senders], sh, g[graph.receivers], shared)


def _cpu(kernel, plan, inputs, graph, out_shape, *flags):
    """Runs one compiled kernel (csrc/cpu/conv.cpp) into a fresh output buffer (every element written)."""
    tables = plan.kernel_tables(inputs[0].device, inputs[0].dtype)
    out = _outputs.new(out_shape, inputs[0])
    kernel(*(t.contiguous() for t in inputs), *(t.contiguous() for t in graph), tables["paths"],
           tables["coefficients"], tables["cg_index"], tables["cg_value"], *flags, out)
    return out


class CpuKernels:
    """Fused C++/OpenMP kernels: the tensor product's tiles on gathered rows, sums over CSR
    segments owned by one task each (deterministic, no atomics, no per-edge output tensor)."""

    @staticmethod
    def forward(plan, x, sh, w, graph, weighted_only):
        return _cpu(torch.ops.nffk_C.conv_forward, plan, (x, sh, w), graph, (x.shape[0], plan.dim_out), weighted_only)

    @staticmethod
    def vjp_x(plan, g, sh, w, graph, weighted_only):
        return _cpu(torch.ops.nffk_C.conv_vjp_x, plan, (g, sh, w), graph, (g.shape[0], plan.dim_in1), weighted_only)

    @staticmethod
    def vjp_sh(plan, x, g, w, graph, weighted_only):
        return _cpu(torch.ops.nffk_C.conv_vjp_sh, plan, (x, g, w), graph, (graph.senders.shape[0], plan.dim_in2),
                    weighted_only)

    @staticmethod
    def vjp_x_w(plan, g, sh, w, x, graph, weighted_only):
        """(vjp_x(g, sh, w), vjp_w(x, sh, g)) for per-edge weights in one pass over the edges: where
        every path is weighted the two share their contraction with g (as the tensor product's one
        pass does)."""
        tables = plan.kernel_tables(g.device, g.dtype)
        gx = _outputs.new((x.shape[0], plan.dim_in1), g)
        gw = _outputs.new(tuple(w.shape), g)
        torch.ops.nffk_C.conv_vjp_x_w(*(t.contiguous() for t in (g, sh, w, x)), *(t.contiguous() for t in graph),
                                      tables["paths"], tables["coefficients"], tables["cg_index"],
                                      tables["cg_value"], weighted_only, gx, gw)
        return gx, gw

    @staticmethod
    def vjp_w(plan, x, sh, g, graph, shared):
        shape = (plan.weight_numel,) if shared else (graph.senders.shape[0], plan.weight_numel)
        return _cpu(torch.ops.nffk_C.conv_vjp_w, plan, (x, sh, g), graph, shape)


def _cuda(kernel: int, plan, a, b, w, graph, out_shape, flag):
    out = _outputs.new(out_shape, a)
    torch.ops.nffk_C.conv_cuda(kernel, a.contiguous(), b.contiguous(), w.contiguous(), *graph,
                               *cuda_program(plan, a.device, a.dtype), flag, out)
    return out


class CudaKernels:
    """csrc/cuda/conv.cu: the cuda tensor-product threads over the CSR views, fused and
    deterministic (one thread per receiver or sender and channel sums its edges in order)."""

    @staticmethod
    def forward(plan, x, sh, w, graph, weighted_only):
        return _cuda(0, plan, x, sh, w, graph, (x.shape[0], plan.dim_out), weighted_only)

    @staticmethod
    def vjp_x(plan, g, sh, w, graph, weighted_only):
        return _cuda(1, plan, g, sh, w, graph, (g.shape[0], plan.dim_in1), weighted_only)

    @staticmethod
    def vjp_sh(plan, x, g, w, graph, weighted_only):
        return _cuda(2, plan, x, g, w, graph, (graph.senders.shape[0], plan.dim_in2), weighted_only)

    @staticmethod
    def vjp_w(plan, x, sh, g, graph, shared):
        shape = (plan.weight_numel,) if shared else (graph.senders.shape[0], plan.weight_numel)
        return _cuda(3, plan, x, sh, g, graph, shape, False)


# Backend name -> kernels, which plans each supports, and the dtypes it computes in (missing: any).
# "triton": kernels/conv.py, fused and deterministic (receiver / sender CSR segments, no atomics).
KERNELS = {"reference": ReferenceKernels, "cpu": CpuKernels, "triton": backends.TritonModule("conv"),
           "cuda": CudaKernels}
SUPPORTS = {"reference": lambda plan: True, "cpu": TP_SUPPORTS["cpu"], "triton": lambda plan: True,
            "cuda": TP_SUPPORTS["cuda"]}
DTYPES = {"cpu": TP_DTYPES["cpu"], "cuda": CUDA_DTYPES}


def implemented_backends(plan: TensorProductPlan, dtype: torch.dtype | None = None) -> tuple:
    """Backends that implement this plan (and, if given, compute in this dtype)."""
    return backends.implemented_by("conv", SUPPORTS, DTYPES, plan, dtype)


# Custom ops: the graph travels as its five tensors.
@torch.library.custom_op("nffk::conv_forward", mutates_args=())
def _conv_forward(x: torch.Tensor, sh: torch.Tensor, w: torch.Tensor, senders: torch.Tensor,
                  receivers: torch.Tensor, receiver_ptr: torch.Tensor, sender_order: torch.Tensor,
                  sender_ptr: torch.Tensor, plan_id: int, backend: str, weighted_only: bool) -> torch.Tensor:
    graph = ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)
    return KERNELS[backend].forward(_plans.get(plan_id), x, sh, w, graph, weighted_only)


@torch.library.custom_op("nffk::conv_vjp_x", mutates_args=())
def _conv_vjp_x(g: torch.Tensor, sh: torch.Tensor, w: torch.Tensor, senders: torch.Tensor,
                receivers: torch.Tensor, receiver_ptr: torch.Tensor, sender_order: torch.Tensor,
                sender_ptr: torch.Tensor, plan_id: int, backend: str, weighted_only: bool) -> torch.Tensor:
    graph = ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)
    return KERNELS[backend].vjp_x(_plans.get(plan_id), g, sh, w, graph, weighted_only)


@torch.library.custom_op("nffk::conv_vjp_sh", mutates_args=())
def _conv_vjp_sh(x: torch.Tensor, g: torch.Tensor, w: torch.Tensor, senders: torch.Tensor,
                 receivers: torch.Tensor, receiver_ptr: torch.Tensor, sender_order: torch.Tensor,
                 sender_ptr: torch.Tensor, plan_id: int, backend: str, weighted_only: bool) -> torch.Tensor:
    graph = ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)
    return KERNELS[backend].vjp_sh(_plans.get(plan_id), x, g, w, graph, weighted_only)


@torch.library.custom_op("nffk::conv_vjp_w", mutates_args=())
def _conv_vjp_w(x: torch.Tensor, sh: torch.Tensor, g: torch.Tensor, senders: torch.Tensor,
                receivers: torch.Tensor, receiver_ptr: torch.Tensor, sender_order: torch.Tensor,
                sender_ptr: torch.Tensor, plan_id: int, backend: str, shared: bool) -> torch.Tensor:
    graph = ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)
    return KERNELS[backend].vjp_w(_plans.get(plan_id), x, sh, g, graph, shared)


@torch.library.custom_op("nffk::conv_vjp_x_w", mutates_args=())
def _conv_vjp_x_w(x: torch.Tensor, sh: torch.Tensor, w: torch.Tensor, g: torch.Tensor, senders: torch.Tensor,
                  receivers: torch.Tensor, receiver_ptr: torch.Tensor, sender_order: torch.Tensor,
                  sender_ptr: torch.Tensor, plan_id: int, backend: str,
                  weighted_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv_vjp_x(g, sh, w), conv_vjp_w(x, sh, g)) for per-edge weights, as one differentiable op:
    the cpu backend's one pass (CpuKernels.vjp_x_w) where autograd records the gradients (the
    force pattern's first backward)."""
    graph = ConvGraph(senders, receivers, receiver_ptr, sender_order, sender_ptr)
    plan, kernels = _plans.get(plan_id), KERNELS[backend]
    if hasattr(kernels, "vjp_x_w"):
        return kernels.vjp_x_w(plan, g, sh, w, x, graph, weighted_only)
    return kernels.vjp_x(plan, g, sh, w, graph, weighted_only), kernels.vjp_w(plan, x, sh, g, graph, False)


@_conv_forward.register_fake
def _(x, sh, w, *graph_and_flags):
    return x.new_empty(x.shape[0], _plans.get(graph_and_flags[5]).dim_out)


@_conv_vjp_x.register_fake
def _(g, sh, w, *graph_and_flags):
    return g.new_empty(g.shape[0], _plans.get(graph_and_flags[5]).dim_in1)


@_conv_vjp_x_w.register_fake
def _(x, sh, w, g, *graph_and_flags):
    return g.new_empty(x.shape[0], _plans.get(graph_and_flags[5]).dim_in1), w.new_empty(w.shape)


@_conv_vjp_sh.register_fake
def _(x, g, w, senders, *graph_and_flags):
    return x.new_empty(senders.shape[0], _plans.get(graph_and_flags[4]).dim_in2)


@_conv_vjp_w.register_fake
def _(x, sh, g, senders, receivers, receiver_ptr, sender_order, sender_ptr, plan_id, backend, shared):
    numel = _plans.get(plan_id).weight_numel
    return x.new_empty(numel) if shared else x.new_empty(senders.shape[0], numel)


def _save(ctx, inputs, output):
    # Every op's inputs end with (plan_id, backend, flag); the tensors before them are saved.
    ctx.save_for_backward(*inputs[:-3])
    ctx.plan_id, ctx.backend, ctx.flag = inputs[-3:]


C, CX, CS, CW, CXW = (torch.ops.nffk.conv_forward, torch.ops.nffk.conv_vjp_x, torch.ops.nffk.conv_vjp_sh,
                      torch.ops.nffk.conv_vjp_w, torch.ops.nffk.conv_vjp_x_w)
_NONE_FOR_GRAPH_AND_FLAGS = (None,) * 8


def _unpack(ctx):
    saved = ctx.saved_tensors
    return saved[:3], tuple(saved[3:]), ctx.plan_id, ctx.backend, ctx.flag, _autograd.wanted(ctx, 3)


def _x_and_w(x, sh, w, g, graph, p, b, only, need):
    """(CX(g, sh, w), CW(x, sh, g)) where `need` (two flags) says. Both, with per-edge weights on the
    cpu backend, run as one pass (CpuKernels.vjp_x_w): called directly where autograd does not
    record them, else through the differentiable CXW; otherwise each is its own op."""
    if all(need) and b == "cpu" and w.dim() == 2:
        if _autograd.direct_call_is_safe(x, sh, w, g):
            return CpuKernels.vjp_x_w(_plans.get(p), g, sh, w, x, ConvGraph(*graph), only)
        return CXW(x, sh, w, g, *graph, p, b, only)
    return (CX(g, sh, w, *graph, p, b, only) if need[0] else None,
            CW(x, sh, g, *graph, p, b, w.dim() == 1) if need[1] else None)


def _backward_forward(ctx, g):
    (x, sh, w), graph, p, b, only, need = _unpack(ctx)
    gx, gw = _x_and_w(x, sh, w, g, graph, p, b, only, (need[0], need[2]))
    return (gx, CS(x, g, w, *graph, p, b, only) if need[1] else None, gw) + _NONE_FOR_GRAPH_AND_FLAGS


def _backward_vjp_x(ctx, h):
    # <h, CX(g, sh, w)> = <g, C(h, sh, w)>
    (g, sh, w), graph, p, b, only, need = _unpack(ctx)
    return (C(h, sh, w, *graph, p, b, only) if need[0] else None,
            CS(h, g, w, *graph, p, b, only) if need[1] else None,
            CW(h, sh, g, *graph, p, b, w.dim() == 1) if need[2] else None) + _NONE_FOR_GRAPH_AND_FLAGS


def _backward_vjp_sh(ctx, h):
    # <h, CS(x, g, w)> = <g, C(x, h, w)>; CX(g, h, w) and CW(x, h, g) take h for the edge attributes.
    (x, g, w), graph, p, b, only, need = _unpack(ctx)
    gx, gw = _x_and_w(x, h, w, g, graph, p, b, only, (need[0], need[2]))
    return (gx, C(x, h, w, *graph, p, b, only) if need[1] else None, gw) + _NONE_FOR_GRAPH_AND_FLAGS


def _backward_vjp_w(ctx, h):
    # <h, CW(x, sh, g)> = <g, C(x, sh, h)> over the weighted paths only.
    (x, sh, g), graph, p, b, _, need = _unpack(ctx)
    return (CX(g, sh, h, *graph, p, b, True) if need[0] else None,
            CS(x, g, h, *graph, p, b, True) if need[1] else None,
            C(x, sh, h, *graph, p, b, True) if need[2] else None) + _NONE_FOR_GRAPH_AND_FLAGS


def _backward_vjp_x_w(ctx, hx, hw):
    # The two ops' backward formulas (_backward_vjp_x with hx, _backward_vjp_w with hw), summed
    # where both reach an input (sh, g).
    saved = ctx.saved_tensors
    (x, sh, w, g), graph, p, b, only = saved[:4], tuple(saved[4:]), ctx.plan_id, ctx.backend, ctx.flag
    need = _autograd.wanted(ctx, 4)

    def total(*terms):
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None
    has_hx, has_hw = hx is not None, hw is not None
    # CX(g, sh, hw) and CW(hx, sh, g): the one pass again (hw covers the weighted paths only)
    gx, gw = _x_and_w(hx, sh, hw, g, graph, p, b, True, (need[0] and has_hw, need[2] and has_hx))
    gsh = total(CS(hx, g, w, *graph, p, b, only) if need[1] and has_hx else None,
                CS(x, g, hw, *graph, p, b, True) if need[1] and has_hw else None)
    gg = total(C(hx, sh, w, *graph, p, b, only) if need[3] and has_hx else None,
               C(x, sh, hw, *graph, p, b, True) if need[3] and has_hw else None)
    return (gx, gsh, gw, gg) + _NONE_FOR_GRAPH_AND_FLAGS


_conv_forward.register_autograd(_backward_forward, setup_context=_save)
_conv_vjp_x_w.register_autograd(_backward_vjp_x_w, setup_context=_save)
_conv_vjp_x.register_autograd(_backward_vjp_x, setup_context=_save)
_conv_vjp_sh.register_autograd(_backward_vjp_sh, setup_context=_save)
_conv_vjp_w.register_autograd(_backward_vjp_w, setup_context=_save)


def conv(node_features: torch.Tensor, edge_sh: torch.Tensor, edge_weights: torch.Tensor | None,
         senders: torch.Tensor | None = None, receivers: torch.Tensor | None = None, num_nodes: int | None = None,
         plan: TensorProductPlan | None = None, backend: str = "auto", graph: ConvGraph | None = None
         ) -> torch.Tensor:
    """out[i] = sum over edges j -> i of TP(node_features[j], edge_sh[e], edge_weights[e]).

    Give either `senders`, `receivers` (sorted by receiver) and `num_nodes`, or a prebuilt
    `graph=ConvGraph.build(...)` (build it once per graph when several layers share it).
    `edge_weights` is [E, weight_numel] (per edge) or [weight_numel] (shared)."""
    if plan is None:
        raise ValueError("plan is required: a TensorProductPlan (e.g. ChannelwiseTensorProduct(...).plan)")
    x, sh = node_features, edge_sh
    if graph is None:
        if senders is None or receivers is None or num_nodes is None:
            raise ValueError("give senders, receivers and num_nodes, or graph=ConvGraph.build(...)")
        graph = ConvGraph.build(senders, receivers, num_nodes, check=not torch.compiler.is_compiling())
    if x.dim() != 2 or x.shape != (graph.num_nodes, plan.dim_in1):
        raise ValueError(f"node_features must have shape [num_nodes={graph.num_nodes}, {plan.dim_in1}] "
                         f"({plan.irreps_in1}), got {tuple(x.shape)}")
    num_edges = graph.senders.shape[0]
    if sh.shape != (num_edges, plan.dim_in2):
        raise ValueError(f"edge_sh must have shape [num_edges={num_edges}, {plan.dim_in2}] ({plan.irreps_in2}), "
                         f"got {tuple(sh.shape)}")
    if edge_weights is None:
        if plan.weight_numel:
            raise ValueError(f"edge_weights is required: the plan has {plan.weight_numel} weights")
        edge_weights = x.new_zeros(0)
    if edge_weights.shape not in ((plan.weight_numel,), (num_edges, plan.weight_numel)):
        raise ValueError(f"edge_weights must have shape [{num_edges}, {plan.weight_numel}] or "
                         f"[{plan.weight_numel}], got {tuple(edge_weights.shape)}")
    if not (x.dtype == sh.dtype == edge_weights.dtype) or not x.is_floating_point():
        raise ValueError(f"node_features, edge_sh and edge_weights must share one floating dtype, got "
                         f"{x.dtype}, {sh.dtype}, {edge_weights.dtype}")
    backends.check_dtype("conv", backend, x.dtype, DTYPES)
    chosen = backends.resolve("conv", backend, x.device, implemented_backends(plan, x.dtype))
    x, sh, edge_weights = x.contiguous(), sh.contiguous(), edge_weights.contiguous()
    if _autograd.direct_call_is_safe(x, sh, edge_weights):
        return KERNELS[chosen].forward(plan, x, sh, edge_weights, graph, False)
    return C(x, sh, edge_weights, *graph, plan.id, chosen, False)
