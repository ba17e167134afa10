"""FLOP counts of nffk's custom ops for `torch.utils.flop_counter.FlopCounterMode`.

Each op reports the FLOPs its plan counts (`plan.flops_per_element`, multiply-adds as 2) times
the number of elements it processes: rows for tensor products and linear maps, edges for the
message-passing conv. A vector-Jacobian product contracts the same CG non-zeros and weights as
the forward, so all four kernels of an op count alike. Dense torch layers (mm, bmm, ...) are
counted by FlopCounterMode itself; elementwise work (activations, spherical harmonics, gathers)
is not counted, following the usual convention.

    from nffk.ops.flops import count_flops
    flops = count_flops(lambda: model(batch))
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from nffk.ops import _plans
from nffk.ops import conv as _conv  # noqa: F401  (registers the conv ops)
from nffk.ops import linear as _linear  # noqa: F401
from nffk.ops import tensor_product as _tensor_product  # noqa: F401

# op -> position of the argument whose first dimension is the element count, position of plan_id
_ROW_OPS = {
    "tp_forward": (0, 3), "tp_vjp_x1": (0, 3), "tp_vjp_x2": (0, 3), "tp_vjp_w": (0, 3),
    "linear_forward": (0, 2), "linear_vjp_x": (0, 2), "linear_vjp_w": (0, 2),
    "conv_forward": (3, 8), "conv_vjp_x": (3, 8), "conv_vjp_sh": (3, 8), "conv_vjp_w": (3, 8),
}


def _formula(element_arg: int, plan_arg: int):
    def flops(*args, out_shape=None, **kwargs) -> int:
        elements = args[element_arg][0]  # shapes arrive as tuples, ints as ints
        return int(elements) * _plans.get(args[plan_arg]).flops_per_element
    return flops


def _register() -> None:
    from torch.utils.flop_counter import flop_registry

    for name, (element_arg, plan_arg) in _ROW_OPS.items():
        packet = getattr(torch.ops.nffk, name)
        if packet not in flop_registry:
            register_flop_formula(packet)(_formula(element_arg, plan_arg))


_register()


def count_flops(fn, *args, **kwargs) -> int:
    """Total FLOPs of the ops run by fn(*args, **kwargs) (nffk ops from their plans, dense torch
    ops from FlopCounterMode's formulas); the result of fn is discarded."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
