"""When the custom-op machinery can be skipped, and what a custom op's backward must compute:
shared by the ops."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def direct_call_is_safe(*tensors: torch.Tensor) -> bool:
    """Whether a forward of these inputs may call its kernel without the custom op (whose
    dispatch costs ~30 us a call, as much as a small kernel): plain tensors that autograd does not
    record, under no functorch transform (vmap, grad) or dispatch mode, outside torch.compile
    (which traces the custom op with fake tensors)."""
    if torch.compiler.is_compiling():  # first: Dynamo cannot trace the checks below
        return False
    if is_in_torch_dispatch_mode():
        return False
    recording = torch.is_grad_enabled()
    return all(type(t) is torch.Tensor and not (recording and t.requires_grad)
               and not torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


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
