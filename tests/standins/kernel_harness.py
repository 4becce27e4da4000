"""The host harness of the fused CUDA kernels (gpumlp/backends/kernels.py, each loss record's in
gpumlp/losses.py): every kernel body as CUDA C compiled for the host (nvcc or a C++ compiler),
called with ``cupy.ElementwiseKernel``'s semantics (``HostKernel``) from inside ``CupyBackend``'s
own methods (``HostCuda``), in float64."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np

from gpumlp.activations import ACTIVATIONS
from gpumlp.backends import kernels
from gpumlp.backends.cpu import CPU, NumpyBackend
from gpumlp.backends.cuda import CupyBackend
from gpumlp.losses import LOSSES
from gpumlp.optim import RULES

NVCC = shutil.which("nvcc")
CXX = shutil.which("c++") or shutil.which("g++")


def c_name(name: str) -> str:
    """A record's name as part of a C identifier: ``"ls-ce"`` → ``"ls_ce"``."""
    return re.sub(r"\W", "_", name)


def all_specs() -> dict[str, tuple[str, str, str]]:
    """Every kernel CupyBackend can launch, by a C identifier (a loss registered now included)."""
    specs = {
        "axpby": kernels.AXPBY,
        "probe": kernels.PROBE,
        "dropout": kernels.DROPOUT_MASK,
        "max_norm": kernels.MAX_NORM,
        "warp": kernels.WARP,
        "affine_draw": kernels.AFFINE_DRAW,
        "elastic_field": kernels.ELASTIC_FIELD,
        "gather_batch": kernels.GATHER_BATCH,
        "advance": kernels.ADVANCE,
    }
    specs.update({f"loss_{c_name(k)}": loss.cuda for k, loss in LOSSES.items()})
    specs.update({f"opt_{k}": rule.cuda for k, rule in RULES.items()})
    for name, act in ACTIVATIONS.items():
        for kind, template in (
            ("bias", kernels.BIAS_ACT),
            ("grad", kernels.ACT_GRAD),
            ("gradm", kernels.ACT_GRAD_MASKED),
        ):
            specs[f"{kind}_{c_name(name)}"] = kernels.activation_kernel(template, act)
    return specs


def params(spec) -> list[tuple[str, str, bool, bool]]:
    """``[(name, type, raw, is_output), …]`` of an ElementwiseKernel's parameter strings."""
    out = []
    for text, is_out in ((spec[0], False), (spec[1], True)):
        for p in filter(None, (s.strip() for s in text.split(","))):
            words = p.split()
            out.append((words[-1], words[-2], words[0] == "raw", is_out))
    return out


def c_source(specs) -> str:
    """Each body as a __host__ __device__ function of one element, a __global__ kernel calling it
    (float and double), and an ``extern "C"`` host loop over n elements with broadcasting by modulus."""
    lines = [
        "#include <cmath>",
        "#include <cstddef>",
        "#ifndef __CUDACC__",
        "#define __host__",
        "#define __device__",
        "#endif",
        "using std::tanh; using std::exp; using std::log; using std::sqrt;",
        "using std::floor; using std::cos; using std::sin;",
    ]
    for name, spec in specs.items():
        ps = params(spec)
        decl = []
        for p, t, raw, is_out in ps:
            ctype = CTYPES.get(t, "T")
            # As CuPy declares them: inputs const, raw ones included; so a kernel that writes through
            # an input fails to compile here as it would under NVRTC.
            if raw:
                decl.append(f"{ctype} *{p}" if is_out else f"const {ctype} *{p}")
            else:
                decl.append(f"{ctype} &{p}" if is_out else f"const {ctype} {p}")
        lines.append(
            f"template <typename T> __host__ __device__ inline void op_{name}(ptrdiff_t i, {', '.join(decl)}) {{"
        )
        lines.append(spec[2])
        lines.append("}")
        args_decl, call = [], []
        for p, t, raw, _ in ps:
            ctype = CTYPES.get(t, "T")
            if t == "int32":
                args_decl.append(f"int {p}")
                call.append(p)
            elif raw:
                args_decl.append(f"{ctype} *{p}")
                call.append(p)
            else:
                args_decl.append(f"{ctype} *p_{p}, long m_{p}")
                call.append(f"p_{p}[i % m_{p}]")
        sig, body_call = ", ".join(args_decl), ", ".join(call)
        lines.append("#ifdef __CUDACC__")
        lines.append(f"template <typename T> __global__ void dev_{name}(long n, {sig}) {{")
        lines.append("  ptrdiff_t i = blockIdx.x * (ptrdiff_t)blockDim.x + threadIdx.x;")
        lines.append(f"  if (i < n) op_{name}<T>(i, {body_call}); }}")
        for T in ("float", "double"):
            lines.append(f"template __global__ void dev_{name}<{T}>(long n, {sig.replace('T ', T + ' ')});")
        lines.append("#endif")
        host_sig = sig.replace("T ", "double ")
        lines.append(f'extern "C" void host_{name}(long n, {host_sig}) {{')
        lines.append(f"  typedef double T; for (ptrdiff_t i = 0; i < n; ++i) op_{name}<T>(i, {body_call}); }}")
    return "\n".join(lines) + "\n"


def build_kernels(directory: Path, specs: dict | None = None) -> ctypes.CDLL:
    """Every kernel (or those of ``specs``, named as ``all_specs`` names them) built into a shared
    library in ``directory`` (nvcc where present, else the C++ compiler ``CXX``; one must exist)."""
    src = directory / ("kernels.cu" if NVCC else "kernels.cpp")
    src.write_text(c_source(all_specs() if specs is None else specs))
    lib = directory / "libkernels.so"
    if NVCC:
        cmd = [NVCC, "-shared", "-Xcompiler", "-fPIC", "-O2", "-o", str(lib), str(src)]
    else:
        cmd = [CXX, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return ctypes.CDLL(str(lib))


CTYPES = {
    "int32": "int",
    "uint32": "unsigned int",
    "int64": "long long",
}  # the C type of a parameter typed other than T


HOST_TYPES = {"uint32": (np.uint32, ctypes.c_uint32), "int64": (np.int64, ctypes.c_int64)}  # T: float64


class HostKernel:
    """``cupy.ElementwiseKernel``'s call semantics (inputs then outputs, scalars and trailing-axis
    broadcasting) over the host build of the same CUDA C, in float64."""

    library = None

    def __init__(self, in_params, out_params, body, name=""):
        spec = (in_params, out_params, body)
        self.name = next(k for k, v in all_specs().items() if v == spec)
        self.params = params(spec)

    def __call__(self, *args):
        assert len(args) == len(self.params), "outputs are always passed in gpumlp"
        arrays = [a for a, (_, t, raw, _) in zip(args, self.params) if not raw and isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        n = int(np.prod(shape))
        c_args, keep = [ctypes.c_long(n)], []
        for a, (_, t, raw, _) in zip(args, self.params):
            if t == "int32":
                c_args.append(ctypes.c_int(int(a)))
                continue
            dtype, ctype = HOST_TYPES.get(t, (np.float64, ctypes.c_double))
            a = np.asarray(a, dtype=dtype) if not isinstance(a, np.ndarray) else a
            assert a.dtype == dtype and a.flags.c_contiguous
            keep.append(a)
            c_args.append(a.ctypes.data_as(ctypes.POINTER(ctype)))
            if not raw:
                assert a.size in (1, n) or shape[-a.ndim :] == a.shape, "trailing-axis broadcasting only"
                c_args.append(ctypes.c_long(max(a.size, 1)))
        getattr(self.library, f"host_{self.name}")(*c_args)
        return args[-1]


class HostXP(types.ModuleType):
    def __getattr__(self, name):
        return getattr(np, name)


class HostCuda(CupyBackend):
    """CupyBackend's own fused methods, its kernels run on the host; products and transfers numpy's."""

    compiles_kernels = False
    blas = property(lambda self: CPU.blas)  # the CPU's, for the products borrowed below
    asarray, to_numpy, matmul_function, gemm = (NumpyBackend.asarray, NumpyBackend.to_numpy,
                                                 NumpyBackend.matmul_function, NumpyBackend.gemm)  # fmt: skip

    def activate(self):
        return CPU.activate()

    def synchronize(self):
        pass


def host_backend(library: ctypes.CDLL, monkeypatch) -> HostCuda:
    """A ``HostCuda`` launching ``library``'s kernels (``build_kernels``); CupyBackend's cache of
    compiled kernels is emptied for the test, so no real CuPy kernel is reused."""
    HostKernel.library = library
    xp = HostXP("host_xp")
    xp.ElementwiseKernel = HostKernel
    monkeypatch.setattr("gpumlp.backends.cuda._KERNELS", {})
    return HostCuda("hostcuda", xp)
