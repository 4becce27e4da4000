"""A stand-in libcublas (C++, built with the host compiler) with the entry points
``gpumlp.backends.cublas.raw_gemm`` calls, cuBLAS's signatures and column-major semantics, computing on
host pointers with a reference triple loop; it keeps the handle's state as cuBLAS does (see
tests/test_raw_gemm.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CXX = shutil.which("c++") or shutil.which("g++")

STANDIN = r"""
#include <cstddef>
#include <cmath>
typedef void *H;
extern "C" {
void *standin_handle = 0, *standin_stream = 0, *standin_workspace = 0;  // as at the last gemm
size_t standin_workspace_size = 0;
int standin_mode = -1;
long standin_gemms = 0;
}
static void *g_stream = 0, *g_ws = 0;
static size_t g_ws_size = 0;
static int g_mode = 0, g_stream_set = 0, g_mode_set = 0;

extern "C" void standin_reset() {
  standin_handle = standin_stream = standin_workspace = g_stream = g_ws = 0;
  standin_workspace_size = g_ws_size = 0;
  standin_mode = -1; standin_gemms = 0; g_mode = g_stream_set = g_mode_set = 0;
}
extern "C" int cublasSetStream_v2(H h, void *s) {
  g_stream = s; g_stream_set = 1;
  g_ws = 0; g_ws_size = 0;  // "unconditionally resets the cuBLAS library workspace back to the default pool"
  return 0;
}
extern "C" int cublasSetWorkspace_v2(H h, void *w, size_t n) { g_ws = w; g_ws_size = n; return 0; }
extern "C" int cublasSetPointerMode_v2(H h, int mode) { g_mode = mode; g_mode_set = 1; return 0; }

static int mx(int a) { return a > 1 ? a : 1; }

// What cuBLAS checks when a gemm is called (also while a stream captures): the state, the sizes.
extern "C" int standin_enqueue(H h, int ta, int tb, int m, int n, int k, int lda, int ldb, int ldc) {
  if (!g_stream_set || !g_mode_set || g_mode != 0 || g_ws == 0 || g_ws_size == 0) return 1;
  if (ta < 0 || ta > 1 || tb < 0 || tb > 1 || m < 0 || n < 0 || k < 0) return 7;
  if (lda < mx(ta ? k : m) || ldb < mx(tb ? n : k) || ldc < mx(m)) return 7;
  standin_handle = h; standin_stream = g_stream; standin_mode = g_mode;
  standin_workspace = g_ws; standin_workspace_size = g_ws_size;
  g_stream_set = g_mode_set = 0;  // the next gemm must set them again
  ++standin_gemms;
  return 0;
}

// C (m, n) = alpha op(A) op(B) + beta C, column-major; C is not read when beta is 0.
template <typename T>
static void compute(int ta, int tb, int m, int n, int k, const T *alpha, const T *A, int lda, const T *B,
                    int ldb, const T *beta, T *C, int ldc) {
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int l = 0; l < k; ++l)
        s += (double)(ta ? A[l + (size_t)i * lda] : A[i + (size_t)l * lda]) *
             (double)(tb ? B[j + (size_t)l * ldb] : B[l + (size_t)j * ldb]);
      T &c = C[i + (size_t)j * ldc];
      c = (T)((*beta == 0 ? 0.0 : (double)*beta * c) + (double)*alpha * s);
    }
}

#define GEMM(NAME, COMPUTE, T)                                                                      \
  extern "C" void COMPUTE(H h, int ta, int tb, int m, int n, int k, const T *alpha, const T *A, int lda, \
                          const T *B, int ldb, const T *beta, T *C, int ldc) {                      \
    compute<T>(ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);                                \
  }                                                                                                 \
  extern "C" int NAME(H h, int ta, int tb, int m, int n, int k, const T *alpha, const T *A, int lda,   \
                      const T *B, int ldb, const T *beta, T *C, int ldc) {                          \
    int status = standin_enqueue(h, ta, tb, m, n, k, lda, ldb, ldc);                                \
    if (status == 0) COMPUTE(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);               \
    return status;                                                                                  \
  }
GEMM(cublasSgemm_v2, standin_sgemm, float)
GEMM(cublasDgemm_v2, standin_dgemm, double)
"""


def build_cublas(directory: Path) -> Path:
    """The stand-in built into ``directory`` with the host C++ compiler (``CXX``, not None): its path."""
    (directory / "standin.cpp").write_text(STANDIN)
    lib = directory / "libcublas.so.99"
    out = subprocess.run([CXX, "-shared", "-fPIC", "-O1", "-o", str(lib), str(directory / "standin.cpp")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return lib
