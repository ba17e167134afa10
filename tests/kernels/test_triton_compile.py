"""Every Triton kernel the ops launch also compiles for sm_80 and sm_90, without a GPU.

The interpreter runs the kernels' Python semantics and never meets the compiler, so errors that
only the compiler sees (types, layouts, a masked load that a pass breaks) would first show on a
GPU. One GPU run did find one: Triton 3.6 could not compile the permuted conv contraction for
sm_90. Here the kernels run once under the interpreter on small inputs, each launch's argument
types and constexprs are recorded, and a fresh process (the interpreter patches triton.language
in this one) compiles every distinct specialisation with the installed Triton for both targets,
down to machine code (cubin).

To compile with another Triton than the installed one (CI also checks 3.6, the version torch 2.11
pairs with), install it into a folder and name that folder in NFFK_TRITON_COMPILE_PATH:
`pip install --target /tmp/triton-3.6 triton==3.6.0`, then
`NFFK_TRITON_COMPILE_PATH=/tmp/triton-3.6 pytest tests/kernels/test_triton_compile.py`. The kernels
still run under the installed Triton's interpreter; only the compiling process sees the other."""
import inspect
import json
import os
import subprocess
import sys

import pytest
import torch

import nffk.nn
from nffk import backends
from nffk.ops.conv import ConvGraph
from nffk.ops.neighbor_list import neighbor_list

triton = pytest.importorskip("triton")
interpreter = pytest.importorskip("triton.runtime.interpreter")
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the kernels compile when they run")

TARGETS = [(80, 32), (90, 32)]  # (compute capability, warp size)
POINTER_TYPES = {torch.float32: "*fp32", torch.float64: "*fp64", torch.int64: "*i64", torch.int32: "*i32",
                 torch.int8: "*i8", torch.uint8: "*u8", torch.bool: "*i1"}


def argument_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return POINTER_TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {type(value).__name__}")


def locate(fn) -> list:
    """How a fresh process finds this kernel: a generated spherical-harmonics kernel by its kind
    and degrees (its code's file name says them), any other by module and name."""
    filename = fn.__code__.co_filename
    if filename.startswith("<nffk.kernels.spherical_harmonics "):
        kind, degrees = filename[1:-1].split(" ")[1:]
        return ["spherical_harmonics", kind, [int(l) for l in degrees[2:].split(",")]]
    return [fn.__module__.rsplit(".", 1)[-1], fn.__name__]


def record_launches(monkeypatch) -> list:
    """Distinct launches, as [locator, signature, constexprs], filled as kernels run."""
    launches = []
    run = interpreter.InterpretedFunction.run

    def recording_run(self, *args, grid, warmup, **kwargs):
        parameters = inspect.signature(self.fn).parameters
        bound = dict(zip(self.arg_names, args), **kwargs)
        signature, constexprs = {}, {}
        for name, parameter in parameters.items():
            if name not in bound:
                continue  # a launch option such as num_warps
            if "constexpr" in str(parameter.annotation):
                signature[name] = "constexpr"
                constexprs[name] = bound[name]
            else:
                signature[name] = argument_type(bound[name])
        launch = [locate(self.fn), signature, constexprs]
        if launch not in launches:
            launches.append(launch)
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(interpreter.InterpretedFunction, "run", recording_run)
    return launches


def run_every_kernel(gen):
    """Each op's Triton kernels on small inputs, float32 and float64, shared and per-row weights,
    fused conv (segmented, permuted, gathered) and the neighbour-list search."""
    kernels = backends.triton_kernels()
    tp, sh, conv = kernels.tensor_product, kernels.spherical_harmonics, kernels.conv
    plans = [nffk.nn.ChannelwiseTensorProduct("2x0e+2x1o", "0e+1o", 1).plan,
             nffk.nn.FullyConnectedTensorProduct("2x0e+1x1o", "0e+1o", "2x0e+1x1o", shared_weights=False).plan]
    senders, receivers = torch.tensor([1, 2, 0, 2, 1]), torch.tensor([0, 0, 1, 1, 2])
    graph = ConvGraph.build(senders, receivers, 3)
    for dtype in (torch.float32, torch.float64):
        def randn(*shape):
            return torch.randn(*shape, generator=gen, dtype=dtype)
        for plan in plans:
            x1, x2, g = randn(5, plan.dim_in1), randn(5, plan.dim_in2), randn(5, plan.dim_out)
            for w in (randn(5, plan.weight_numel), randn(plan.weight_numel)):
                shared = w.dim() == 1
                tp.forward(plan, x1, x2, w, False)
                tp.vjp_x1(plan, g, x2, w, False)
                tp.vjp_x2(plan, x1, g, w, False)
                tp.vjp_w(plan, x1, x2, g, shared)
                x, gx = randn(3, plan.dim_in1), randn(3, plan.dim_out)
                conv.forward(plan, x, x2, w, graph, False)
                conv.vjp_x(plan, gx, x2, w, graph, False)
                conv.vjp_sh(plan, x, gx, w, graph, False)
                conv.vjp_w(plan, x, x2, gx, graph, shared)
        vectors, cotangent, tangent = randn(7, 3), randn(7, 16), randn(7, 3)
        coefficients = sh.coefficient_tensor(*_sh_coefficients(3), "cpu", dtype)
        sh.forward(vectors, (0, 1, 2, 3), coefficients)
        sh.vjp(vectors, cotangent, (0, 1, 2, 3), coefficients)
        sh.jvp(vectors, tangent, (0, 1, 2, 3), coefficients)
        sh.hvp(vectors, cotangent, tangent, (0, 1, 2, 3), coefficients)
    positions = torch.rand(6, 3, generator=gen, dtype=torch.float64) * 4
    neighbor_list(positions, 2.5, torch.eye(3, dtype=torch.float64) * 4, backend="triton")


def _sh_coefficients(lmax):
    from nffk.o3.spherical_harmonics import _scaled_coefficients
    return _scaled_coefficients(lmax, "integral")


def test_every_launched_kernel_compiles_for_sm80_and_sm90(monkeypatch, seeded, tmp_path):
    launches = record_launches(monkeypatch)
    run_every_kernel(seeded)
    names = {locator[-1] if locator[0] != "spherical_harmonics" else locator[1] for locator, _, _ in launches}
    assert {"_contract_kernel", "_weights_kernel", "_search_kernel", "forward", "vjp", "jvp", "hvp"} <= names, names
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # an empty cache: every kernel is compiled, none looked up
    if os.environ.get("NFFK_TRITON_COMPILE_PATH"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ["NFFK_TRITON_COMPILE_PATH"],
                                                          env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, __file__], input=json.dumps(launches), capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"compiled {len(launches) * len(TARGETS)} of {len(launches) * len(TARGETS)}" in done.stdout, done.stdout


def compile_launches(launches) -> int:
    """Compiles each recorded launch for every target (run in a process without the interpreter)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernels = backends.triton_kernels()
    failures, compiled = [], 0
    for locator, signature, constexprs in launches:
        module = getattr(kernels, locator[0])
        fn = module._kernel(tuple(locator[2]), locator[1]) if len(locator) == 3 else getattr(module, locator[1])
        names = list(signature)
        source = ASTSource(fn=fn, signature=signature,
                           constexprs={(names.index(name),): value for name, value in constexprs.items()})
        for capability, warp_size in TARGETS:
            try:
                assert triton.compile(source, target=GPUTarget("cuda", capability, warp_size)).asm.get("cubin")
                compiled += 1
            except Exception as err:  # noqa: BLE001 - report every failure, then fail
                failures.append(f"{'/'.join(map(str, locator))} sm_{capability} {constexprs}: {type(err).__name__}: "
                                f"{err}")
    print(f"Triton {triton.__version__}: compiled {compiled} of {len(launches) * len(TARGETS)}")
    print("\n\n".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(compile_launches(json.load(sys.stdin)))
