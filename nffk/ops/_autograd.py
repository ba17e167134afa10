"""What a custom op's backward must compute: shared by the ops' autograd formulas."""
from __future__ import annotations

import torch


def wanted(ctx, count: int) -> tuple:
    """Which of the first `count` inputs' gradients this backward must produce: those that require
    grad *and* that the running backward will use. `torch.autograd.grad(energy, positions)`
    (forces) reaches weights and parameters too, which require grad for the later
    `loss.backward()` but are not used by this one; built-in ops skip those, and so do we (each
    skipped gradient is a whole kernel: one in seven of the tensor product's force pattern)."""
    result = []
    for n, need in enumerate(ctx.needs_input_grad[:count]):
        node = ctx.next_functions[n][0] if need and hasattr(ctx, "next_functions") else None
        if node is not None:
            try:
                need = torch._C._will_engine_execute_node(node)
            except RuntimeError:  # a leaf that autograd.grad asks for, or no engine running: needed
                need = True
        result.append(bool(need))
    return tuple(result)
