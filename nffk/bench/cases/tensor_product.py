"""Tensor products: nffk against e3nn, cuequivariance-torch and, on a GPU, OpenEquivariance.

Per-element (per-edge) weights, as in NequIP/MACE message functions. Five passes: forward,
forward+backward (gradients for the node features and the weights), the same from a given output
gradient, the force-training double backward, and the same from a given dE/dout. Work per pass
counts trilinear kernels: each of the four (forward, vjp_x1, vjp_x2, vjp_w) reads three of (x1,
x2, w, out) and writes the fourth, so each moves the same bytes and does about the forward's FLOPs;
forward+backward is 3 of them, double backward 6, its given-gradient form 3.

forward+backward and double backward put a loss on the output (`out.pow(2).sum()`), whose torch
ops cost the same whoever computed `out` (for high-order at E = 200: ~15 ms, half of nffk's three
kernels, and more where glibc gives its temporaries fresh pages; timed alone as the `torch loss
ops` bound of those two passes); "backward, dL/dout given"
runs the same three kernels from a given output gradient, as operator benchmarks do, so its ratios
are the operators'; "double backward, dE/dout given" does the same for the force pattern."""
from __future__ import annotations

import torch

import nffk.nn
from nffk import backends
from nffk.bench.cases._common import cached, cuequivariance_method, element_size, randn, require, requires_gpu, seeded
from nffk.bench.registry import Built, Case, Implementation
from nffk.o3 import Irreps
from nffk.ops.tensor_product import implemented_backends


def sh_irreps(lmax: int) -> str:
    return "+".join(f"{l}{'eo'[l % 2]}" for l in range(lmax + 1))


def features(mul: int, lmax: int) -> str:
    """`mul` channels of every l up to lmax with the parity of spherical harmonics: 32x0e+32x1o+..."""
    return "+".join(f"{mul}x{l}{'eo'[l % 2]}" for l in range(lmax + 1))


# name -> (node irreps, edge irreps, output irreps or lmax, connection, full batch size)
CONFIGS = {
    "nequip": ("64x0o+64x0e+64x1o+64x1e+64x2o+64x2e", "0e+1o+2e", 2, "uvu", 10_000),
    "mace-medium": ("128x0e+128x1o", "0e+1o+2e+3o", 2, "uvu", 10_000),
    "high-order": (features(32, 6), sh_irreps(6), 6, "uvu", 2_000),
    "fully-connected": ("48x0e+48x0o+10x1o+10x1e", "0e+1o+2e", "48x0e+48x0o+10x1o+10x1e", "uvw", 10_000),
}
# Run only when named (smoke tests) or by --plots (the lmax sweep: 32 channels of l = 0..L times
# spherical harmonics up to L). Kept out of CONFIGS, which other scripts iterate over.
EXTRA_CONFIGS = {"tiny": ("4x0e+4x1o", "0e+1o", 1, "uvu", 1_600)}
for _l in range(1, 7):
    EXTRA_CONFIGS[f"high-order-l{_l}"] = (features(32, _l), sh_irreps(_l), _l, "uvu", 2_000)
ALL_CONFIGS = {**CONFIGS, **EXTRA_CONFIGS}
LMAX_SWEEP = [f"high-order-l{_l}" for _l in range(1, 7)]
BATCH_SWEEP = {"config": "mace-medium", "quick": [10, 100], "default": [10, 100, 1000],
               "full": [10, 100, 1000, 10_000, 30_000]}
MAIN = ["nequip", "mace-medium", "high-order", "fully-connected"]
DEFAULTS = {"quick": ["mace-medium", "fully-connected"], "default": MAIN, "full": MAIN}
DIVISOR = {"quick": 100, "default": 10, "full": 1}  # batch = full batch / divisor
LOSS_PASSES = ("forward", "forward+backward", "double backward")
KERNELS = {"forward": 1, "forward+backward": 3, "backward, dL/dout given": 3, "double backward": 6,
           "double backward, dE/dout given": 3}


# -- modules ----------------------------------------------------------------------------------
def build(name: str, backend: str = "auto"):
    """(nffk module, e3nn module or None) of config `name`, same instructions and weight layout."""
    ours = build_nffk(name, backend)
    try:
        theirs = build_e3nn(name, ours)
    except ImportError:
        theirs = None
    return ours, theirs


def build_nffk(name: str, backend: str = "auto"):
    node, edge, out, mode, _ = ALL_CONFIGS[name]
    if mode == "uvu":
        return nffk.nn.ChannelwiseTensorProduct(node, edge, out, backend=backend)
    return nffk.nn.FullyConnectedTensorProduct(node, edge, out, shared_weights=False, backend=backend)


def build_e3nn(name: str, ours):
    node, edge, _, _, _ = ALL_CONFIGS[name]
    return build_e3nn_from(node, edge, ours)


def build_e3nn_from(node: str, edge: str, ours):
    """e3nn's TensorProduct with the instructions of nffk's module `ours`, e3nn's optimisation
    defaults untouched (code generation, opt_einsum_fx, TorchScript)."""
    import e3nn.o3
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in ours.instructions]
    return e3nn.o3.TensorProduct(node, edge, str(ours.irreps_out), instructions, shared_weights=False,
                                 internal_weights=False)


def build_cuequivariance(name: str, ours, device):
    node, edge, _, mode, _ = ALL_CONFIGS[name]
    return cuequivariance_module(node, edge, mode, ours, device)


def cuequivariance_module(node: str, edge: str, mode: str, ours, device):
    """cuequivariance-torch's module for the same product as nffk's `ours` ("uvu": channel-wise
    with the same output irreps; "uvw": fully connected), in e3nn's mul_ir layout, with its best
    available method. Returns (module, method)."""
    cue = require("cuequivariance", "cuequivariance")
    cuet = require("cuequivariance_torch", "cuequivariance-torch")
    irreps1, irreps2 = cue.Irreps("O3", node), cue.Irreps("O3", edge)
    if mode == "uvu":
        wanted = sorted({(ir.l, ir.p) for _, ir in ours.irreps_out})
        filter_out = [cue.O3(l, p) for l, p in wanted]

        def make(method):
            return cuet.ChannelWiseTensorProduct(irreps1, irreps2, filter_out, layout=cue.mul_ir,
                                                 shared_weights=False, internal_weights=False, device=device,
                                                 method=method)
    else:
        irreps_out = cue.Irreps("O3", str(ours.irreps_out))

        def make(method):
            return cuet.FullyConnectedTensorProduct(irreps1, irreps2, irreps_out, layout=cue.mul_ir,
                                                    shared_weights=False, internal_weights=False, device=device,
                                                    method=method)
    return cuequivariance_method(make, device)


def build_openequivariance(name: str, ours, device, dtype):
    requires_gpu(device, "OpenEquivariance")
    oeq = require("openequivariance", "openequivariance")
    node, edge, _, _, _ = ALL_CONFIGS[name]
    instructions = [(i.i_in1, i.i_in2, i.i_out, i.connection_mode, i.has_weight) for i in ours.instructions]
    problem = oeq.TPProblem(oeq.Irreps(node), oeq.Irreps(edge), oeq.Irreps(str(ours.irreps_out)), instructions,
                            shared_weights=False, internal_weights=False, irrep_dtype=dtype, weight_dtype=dtype)
    return oeq.TensorProduct(problem)


def make_inputs(module, batch: int, sets: int = 2, dtype=torch.float32):
    """`sets` random argument tuples (x1, x2, per-element weights) for `module`."""
    irreps1, irreps2 = Irreps(str(module.irreps_in1)), Irreps(str(module.irreps_in2))
    return [(torch.randn(batch, irreps1.dim, dtype=dtype), torch.randn(batch, irreps2.dim, dtype=dtype),
             torch.randn(batch, module.weight_numel, dtype=dtype)) for _ in range(sets)]


# -- passes -----------------------------------------------------------------------------------
def forward(module):
    def run(x1, x2, w):
        with torch.no_grad():
            return module(x1, x2, w)
    return run


def forward_backward(module):
    def run(x1, x2, w):
        x1 = x1.detach().requires_grad_()
        w = w.detach().requires_grad_()
        module(x1, x2, w).pow(2).sum().backward()
    return run


def backward_given(module):
    """Forward, then backward from a given dL/dout (fixed random numbers, one tensor for every input
    set, drawn on the untimed warm-up call): the operator's own gradient kernels without the loss
    on its output, which costs torch a few passes over that output whatever computed it."""
    given = []

    def run(x1, x2, w):
        x1 = x1.detach().requires_grad_()
        w = w.detach().requires_grad_()
        out = module(x1, x2, w)
        out.backward(_given_like(out, given))
    return run


def _fixed_randn(shape, like, slot: list):
    """Fixed random numbers of `shape` (like's device and dtype), drawn once into the one-slot list
    `slot` and reused while the shape stays."""
    if not slot or slot[0].shape != torch.Size(shape):
        seed = torch.Generator(device=like.device).manual_seed(0)
        slot[:] = [torch.randn(shape, generator=seed, device=like.device, dtype=like.dtype)]
    return slot[0]


def _given_like(out, given: list):
    """The fixed random output gradient of `out`'s shape, drawn once into the one-slot list `given`."""
    return _fixed_randn(out.shape, out, given)


def double_backward(module):
    """The force-training pattern: gradient w.r.t. an input with create_graph, a loss on it, backward."""
    def run(x1, x2, w):
        x2 = x2.detach().requires_grad_()
        w = w.detach().requires_grad_()
        energy = module(x1, x2, w).pow(2).sum()
        (force,) = torch.autograd.grad(energy, x2, create_graph=True)
        force.pow(2).sum().backward()
    return run


def double_backward_given(module):
    """The force-training pattern from a given dE/dout, as when the product's output feeds the
    model's later layers: the forces' gradient with create_graph, a loss on the forces (E x dim of
    x2, small), backward. The three kernels (forward, vjp_x2, vjp_w of that vjp) without torch's
    passes over the output for `out.pow(2).sum()` and its derivatives."""
    given = []

    def run(x1, x2, w):
        x2 = x2.detach().requires_grad_()
        w = w.detach().requires_grad_()
        out = module(x1, x2, w)
        (force,) = torch.autograd.grad(out, x2, _given_like(out, given), create_graph=True)
        force.pow(2).sum().backward()
    return run


def loss_ops_alone(pass_name: str, dim_out: int):
    """torch's ops of a loss-based pass on an output-sized tensor, without a tensor product: the
    loss `out.pow(2).sum()` and its backward, and for the double backward its derivative with
    create_graph and that derivative's backward (given the gradient a tensor product's double
    backward would hand it: fixed random numbers). Every implementation's time for the pass
    includes these passes over the output."""
    out_slot, given = [], []

    def run(x1, x2, w):
        shape = (x1.shape[0], dim_out)
        out = _fixed_randn(shape, x1, out_slot).detach().requires_grad_()
        if pass_name == "forward+backward":
            out.pow(2).sum().backward()
        else:
            (dloss_dout,) = torch.autograd.grad(out.pow(2).sum(), out, create_graph=True)
            dloss_dout.backward(_fixed_randn(shape, x1, given))
    return run


LOSS_OPS = "torch loss ops"  # the bound every loss-based pass includes (loss_ops_alone)
PASSES = {"forward": forward, "forward+backward": forward_backward, "backward, dL/dout given": backward_given,
          "double backward": double_backward, "double backward, dE/dout given": double_backward_given}


# -- cases ------------------------------------------------------------------------------------
def _weights_adapter(numel: int, expected: int, device, dtype):
    """For a peer whose weight layout has another size: its own weights per input set (not timed)."""
    if numel == expected:
        return None
    cache = {}

    def adapt(args):
        x1, x2, w = args
        if id(args) not in cache:
            cache[id(args)] = torch.randn(w.shape[0], numel, device=device, dtype=dtype)
        return x1, x2, cache[id(args)]
    return adapt


def _implementations(name: str, pass_name: str, device, dtype, reference: bool) -> list:
    make_pass = PASSES[pass_name]

    def module(impl, build_fn):
        return cached(("tp", name, impl, device, dtype), build_fn)

    def nffk_built(backend):
        def build_it():
            ours = module(f"nffk[{backend}]", lambda: build_nffk(name, backend).to(device=device, dtype=dtype))
            chosen = backends.resolve("tensor_product", backend, device, implemented_backends(ours.plan))
            return Built(make_pass(ours), output=forward(ours), note=f"backend={chosen}")
        return build_it

    def base():
        return module("nffk[auto]", lambda: build_nffk(name, "auto").to(device=device, dtype=dtype))

    def e3nn_built():
        require("e3nn", "e3nn")
        theirs = module("e3nn", lambda: build_e3nn(name, base()).to(device=device, dtype=dtype))
        return Built(make_pass(theirs), output=forward(theirs), note="codegen+opt_einsum_fx (defaults)")

    def cue_built():
        theirs, method = module("cuequivariance", lambda: build_cuequivariance(name, base(), device))
        theirs = theirs.to(dtype=dtype)
        adapt = _weights_adapter(theirs.weight_numel, base().weight_numel, device, dtype)
        return Built(make_pass(theirs), adapt=adapt, note=f"method={method}; output layout differs, not compared")

    def oeq_built():
        theirs = module("openequivariance", lambda: build_openequivariance(name, base(), device, dtype))
        return Built(make_pass(theirs), output=forward(theirs), note="JIT-compiled CUDA kernels")

    impls = [Implementation("nffk", nffk_built("auto"))]
    auto_backend = backends.resolve("tensor_product", "auto", device, implemented_backends(base().plan))
    if reference and auto_backend != "reference":
        impls.append(Implementation("nffk[reference]", nffk_built("reference")))
    impls += [Implementation("e3nn", e3nn_built), Implementation("cuequivariance", cue_built)]
    if device.type == "cuda":
        impls.append(Implementation("openequivariance", oeq_built))
    if pass_name in ("forward+backward", "double backward"):
        impls.append(Implementation(LOSS_OPS, lambda: Built(loss_ops_alone(pass_name, base().plan.dim_out),
                                                            note="out.pow(2).sum() and its derivatives alone"),
                                    bound=True))
    return impls


def _case(name: str, pass_name: str, batch: int, device, dtype, reference: bool, family=None, params=None) -> Case:
    ours = cached(("tp", name, "nffk[auto]", device, dtype),
                  lambda: build_nffk(name, "auto").to(device=device, dtype=dtype))
    plan = ours.plan
    size = element_size(dtype)
    dims = (plan.dim_in1, plan.dim_in2, plan.weight_numel)

    def make_inputs_for(seed):
        g = seeded(seed, device)
        return tuple(randn((batch, d), g, device, dtype) for d in dims)

    k = KERNELS[pass_name]
    node, edge, out, mode, _ = ALL_CONFIGS[name]
    return Case(op="tp", config=name, pass_name=pass_name, size=batch, size_name="batch",
                make_inputs=make_inputs_for,
                implementations=_implementations(name, pass_name, device, dtype, reference),
                flops=k * plan.flops_per_element * batch,
                bytes=k * plan.bytes_per_element(dtype, shared_weights=False) * batch,
                input_bytes=batch * sum(dims) * size, params=dict(params or {}), family=family, device=device,
                rtol=1e-4 if dtype == torch.float32 else 1e-10,
                description=f"{node} x {edge} -> {plan.irreps_out.simplify()} ({mode}, {len(plan.paths)} paths, "
                            f"{plan.weight_numel} weights per element)")


def cases(configs, mode: str, device, dtype, sweeps: bool = False, reference: bool = False) -> list:
    result = []
    for name in configs:
        batch = max(1, ALL_CONFIGS[name][4] // DIVISOR[mode])
        lmax = ALL_CONFIGS[name][2] if isinstance(ALL_CONFIGS[name][2], int) else None
        for pass_name in PASSES:
            result.append(_case(name, pass_name, batch, device, dtype, reference, params={"lmax": lmax}))
    if sweeps:
        for name in LMAX_SWEEP:
            batch = max(1, ALL_CONFIGS[name][4] // DIVISOR[mode])
            for pass_name in ("forward", "forward+backward"):
                result.append(_case(name, pass_name, batch, device, dtype, reference, family="lmax",
                                    params={"lmax": ALL_CONFIGS[name][2]}))
        for batch in BATCH_SWEEP[mode]:
            for pass_name in ("forward", "forward+backward"):
                result.append(_case(BATCH_SWEEP["config"], pass_name, batch, device, dtype, reference, family="batch",
                                    params={"batch": batch}))
    return result
