"""`from_e3nn`: turn an e3nn module into the equivalent nffk module, weights included."""
from __future__ import annotations

import torch

from nffk.nn.gate import Gate
from nffk.nn.linear import Linear
from nffk.nn.spherical_harmonics import SphericalHarmonics
from nffk.nn.tensor_product import TensorProduct


def _copy_parameters(target: torch.nn.Module, source: torch.nn.Module, names) -> None:
    floating = [t for t in list(source.parameters()) + list(source.buffers()) if t.is_floating_point()]
    if floating:  # same dtype and device as the e3nn module
        target.to(dtype=floating[0].dtype, device=floating[0].device)
    with torch.no_grad():
        for name in names:
            value = getattr(source, name)
            if isinstance(value, torch.nn.Parameter) and value.numel():
                getattr(target, name).copy_(value)


def _tensor_product(module, backend):
    # e3nn stores each path's final coefficient as path_weight; with both normalisations off,
    # nffk's coefficient is sqrt(path_weight), so pass the square.
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight, i.path_weight ** 2)
                    for i in module.instructions]
    converted = TensorProduct(module.irreps_in1, module.irreps_in2, module.irreps_out, instructions,
                              irrep_normalization="none", path_normalization="none",
                              internal_weights=module.internal_weights, shared_weights=module.shared_weights,
                              backend=backend)
    _copy_parameters(converted, module, ["weight"])
    return converted


def _linear(module, backend):
    paths = [i for i in module.instructions if i.i_in != -1]
    biases = [any(i.i_in == -1 and i.i_out == k for i in module.instructions) for k in range(len(module.irreps_out))]
    for normalization in ("element", "path"):
        converted = Linear(module.irreps_in, module.irreps_out, instructions=[(i.i_in, i.i_out) for i in paths],
                           biases=biases, internal_weights=module.internal_weights,
                           shared_weights=module.shared_weights, path_normalization=normalization, backend=backend)
        if all(abs(p.coefficient - i.path_weight) <= 1e-12 * abs(i.path_weight)
               for p, i in zip(converted.plan.paths, paths)):
            _copy_parameters(converted, module, ["weight", "bias"])
            return converted
    raise ValueError("from_e3nn: this e3nn Linear uses a normalisation nffk does not reproduce (f_in/f_out?)")


def _activations(activation_module):
    # e3nn wraps each activation in normalize2mom (attribute f); nffk re-applies the same normalisation.
    return [getattr(act, "f", act) for act in activation_module.acts]


def from_e3nn(module: torch.nn.Module, backend: str = "auto") -> torch.nn.Module:
    """The nffk equivalent of an e3nn `o3.TensorProduct` (and its subclasses such as
    `FullyConnectedTensorProduct`), `o3.Linear`, `o3.SphericalHarmonics` or `nn.Gate`, with the
    same weights: same inputs give the same outputs."""
    import e3nn.nn
    import e3nn.o3

    if isinstance(module, e3nn.o3.TensorProduct):
        return _tensor_product(module, backend)
    if isinstance(module, e3nn.o3.Linear):
        return _linear(module, backend)
    if isinstance(module, e3nn.o3.SphericalHarmonics):
        return SphericalHarmonics(module.irreps_out, module.normalize, module.normalization, module.irreps_in,
                                  backend=backend)
    if isinstance(module, e3nn.nn.Gate):
        return Gate(module.irreps_scalars, _activations(module.act_scalars), module.irreps_gates,
                    _activations(module.act_gates), module.irreps_gated)
    raise ValueError(f"from_e3nn: cannot convert {type(module).__name__}; supported: TensorProduct and its "
                     "subclasses, Linear, SphericalHarmonics, Gate")
