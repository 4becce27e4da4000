"""The CUDA C of the fused element-wise kernels the CuPy backend launches (``CupyBackend``).

Each kernel does in one launch what the numpy reference in ``gpumlp.backends.base.Backend`` and
``gpumlp.optim`` does in several array operations; the math is the same, the rounding may differ
in the last bit (CUDA's tanh/exp differ from numpy's, and nvcc contracts a·b + c into one fused
multiply-add). Kept here as plain strings, so they are importable without CuPy: the tests compile
every body with ``nvcc`` where one exists, and compare each kernel with its reference on a GPU.

A kernel is ``(in_params, out_params, body)`` for ``cupy.ElementwiseKernel``: one thread per
element (``i`` is its index), inputs read, outputs read and written. ``T`` is the array dtype.
Activation bodies are filled in from ``Activation.cuda_f`` (of the pre-activation ``x``) and
``Activation.cuda_grad`` (of the output ``a``) in ``gpumlp.activations``.
"""

from __future__ import annotations

from string import Template

from gpumlp.backends.warp import CENTRE, PIXELS, SIDE

# Z ← f(Z + b): the hidden layer's bias and activation, in place on the fresh product Z (n, n_out).
BIAS_ACT = ("T b", "T z", "const T x = z + b; z = {f};")

# dA ← dA ⊙ f'(H), or dA ⊙ M ⊙ f'(H) with dropout's multiplier M: backward through a hidden layer.
ACT_GRAD = ("T a", "T d", "d = d * ({grad});")
ACT_GRAD_MASKED = ("T a, T m", "T d", "d = (d * m) * ({grad});")

# The output layer and the loss: each loss record's own kernel (``Loss.cuda``, gpumlp/losses.py).

# y ← α·x + β·y: Backend.axpby.
AXPBY = ("T x, T alpha, T beta", "T y", "y = beta * y + alpha * x;")

# The batch a captured step trains on (``--cuda-graph``, gpumlp.backends.graph), gathered inside the graph:
# rows perm[pos + r] (r < b) of X (n, d) and Y (n, k), C-contiguous and flat, into xs (b, d) and
# ys (b, k), one thread per element of xs (it writes ys's elements j ≡ its column mod d, so any k).
# pos (1,) is read on the device: the graph's launches walk the epoch's permutation by themselves
# (``ADVANCE`` moves pos on after). Indices are not checked: pos + b ≤ n (whole batches only).
GATHER_BATCH = (
    "raw T x, raw T y, raw int64 perm, raw int64 pos, int32 d, int32 k",
    "T xs, raw T ys",
    """
    const ptrdiff_t r = i / d, c = i % d;
    const ptrdiff_t src = perm[pos[0] + r];         // the image in row r of the batch
    xs = x[src * d + c];
    for (ptrdiff_t j = c; j < k; j += d) ys[r * k + j] = y[src * k + j];
    """,
)
# pos (1,) += b, one thread: after the gather, so that the next launch takes the next batch.
ADVANCE = ("int32 b", "int64 pos", "pos += b;")

# The optimisers' fused kernels live with their readable rules, as each class's ``cuda`` in
# gpumlp/optim.py: adding a rule is one class there.

# Dropout's multiplier from gpumlp.backends.rng's counter-based bits: h(base + k) with h lowbias32 (unsigned
# arithmetic wraps modulo 2³², as numpy's uint32 does), kept where ≥ threshold.
DROPOUT_MASK = (
    "uint32 base, uint32 k, uint32 threshold, T scale",
    "T m",
    """
    unsigned int x = base + k;
    x ^= x >> 16; x *= 0x7FEB352DU; x ^= x >> 15; x *= 0x846CA68BU; x ^= x >> 16;
    m = x >= threshold ? scale : T(0);
    """,
)

# Max-norm, one thread per column j of W (rows, cols), C-contiguous and flat: its norm, then the
# column scaled by min(1, c / max(norm, 1e-12)) (columns within the bound are left as they are).
MAX_NORM = (
    "int32 rows, int32 cols, T c",
    "T norm, raw T w",
    """
    T s = 0;
    for (int r = 0; r < rows; ++r) { const T v = w[(ptrdiff_t)r * cols + i]; s += v * v; }
    norm = sqrt(s);
    const T f = c / (norm > T(1e-12) ? norm : T(1e-12));
    if (f < T(1)) {
        for (int r = 0; r < rows; ++r) w[(ptrdiff_t)r * cols + i] *= f;
    }
    """,
)

_HASH = "x ^= x >> 16; x *= 0x7FEB352DU; x ^= x >> 15; x *= 0x846CA68BU; x ^= x >> 16;"  # gpumlp.backends.rng's h
# The image geometry the augmentation kernels are written for, from the shape the augmenter shares
# with them (gpumlp.backends.warp): $SIDE, $PIXELS, … in a body below.
_GEOMETRY = {"SIDE": SIDE, "PIXELS": PIXELS, "AXES_PIXELS": 2 * PIXELS, "CENTRE": CENTRE, "HASH": _HASH}


def _geometry(body: str) -> str:
    """An augmentation kernel's ``body`` with the image geometry and the hash filled in."""
    return Template(body).substitute(_GEOMETRY)


# Augmentation's affine draw, one thread per image i (gpumlp.training.augment.Augmenter.reference_draw): six
# uniforms in [−1, 1) from the counter-based bits h(base[6i + j] + k), 24 bits each (exact), then the
# translation t (b, 2) and, with ``affine``, A = R(θ) S H (b, 2, 2), written through raw arrays.
AFFINE_DRAW = (
    "raw uint32 base, uint32 k, T shift, T rot, T scale, T shear, int32 affine",
    "T v0, raw T t, raw T a",
    _geometry("""
    T v[6];
    for (int j = 0; j < 6; ++j) {
        unsigned int x = base[6 * (ptrdiff_t)i + j] + k;
        $HASH
        const T u = T(x >> 8) * T(5.9604644775390625e-08);  // 2^-24
        v[j] = u * T(2) - T(1);
    }
    t[2 * i] = v[0] * shift;
    t[2 * i + 1] = v[1] * shift;
    if (affine) {
        const T th = v[2] * rot, c = cos(th), s = sin(th);
        const T sr = v[3] * scale + T(1), sc = v[4] * scale + T(1), sh = v[5] * shear;
        a[4 * i] = c * sr;
        a[4 * i + 1] = c * sr * sh - s * sc;
        a[4 * i + 2] = s * sr;
        a[4 * i + 3] = s * sr * sh + c * sc;
    }
    v0 = v[0];
    """),
)

# The elastic field's random integers F (b, 2, 28, 28): 16 bits per axis of h(base[784 img + pix] + k).
ELASTIC_FIELD = (
    "raw uint32 base, uint32 k",
    "T f",
    _geometry("""
    const ptrdiff_t img = i / $AXES_PIXELS;
    const int rest = i % $AXES_PIXELS, axis = rest / $PIXELS, pix = rest % $PIXELS;
    unsigned int x = base[img * $PIXELS + pix] + k;
    $HASH
    f = axis == 0 ? T(x >> 16) : T(x & 0xFFFFU);
    """),
)

# Augmentation's resample, one thread per output pixel of X (b, 784), C-contiguous and flat: its
# source s = p + (A − I)(p − c) + t + d (gpumlp.training.augment.Augmenter.source, the same order of sums),
# clipped to [−1, 28], and the bilinear interpolation of its four neighbours, zero outside the image.
# a (b, 2, 2), t (b, 2), d (b, 2, 28, 28) are used where has_a, has_t, has_d.
WARP = (
    "raw T x, raw T a, raw T t, raw T d, int32 has_a, int32 has_t, int32 has_d",
    "T y",
    _geometry("""
    const int img = i / $PIXELS, pix = i % $PIXELS, pr = pix / $SIDE, pc = pix % $SIDE;
    T row = T(pr), col = T(pc);
    if (has_t) { row = row + t[2 * img]; col = col + t[2 * img + 1]; }
    if (has_a) {
        const T qr = T(pr) - T($CENTRE), qc = T(pc) - T($CENTRE);
        row = (row + (a[4 * img] - T(1)) * qr) + a[4 * img + 1] * qc;
        col = (col + (a[4 * img + 3] - T(1)) * qc) + a[4 * img + 2] * qr;
    }
    if (has_d) { row = row + d[(ptrdiff_t)(2 * img) * $PIXELS + pix]; col = col + d[(ptrdiff_t)(2 * img + 1) * $PIXELS + pix]; }
    T wr = row < T(-1) ? T(-1) : (row > T($SIDE) ? T($SIDE) : row);
    T wc = col < T(-1) ? T(-1) : (col > T($SIDE) ? T($SIDE) : col);
    const T r0 = floor(wr), c0 = floor(wc);
    wr -= r0;
    wc -= c0;
    const int ir = (int)r0, ic = (int)c0;
    const ptrdiff_t at = (ptrdiff_t)img * $PIXELS;
    const bool top = ir >= 0 && ir < $SIDE, bottom = ir + 1 >= 0 && ir + 1 < $SIDE;
    const bool left = ic >= 0 && ic < $SIDE, right = ic + 1 >= 0 && ic + 1 < $SIDE;
    const T v00 = top && left ? x[at + ir * $SIDE + ic] : T(0);
    const T v01 = top && right ? x[at + ir * $SIDE + ic + 1] : T(0);
    const T v10 = bottom && left ? x[at + (ir + 1) * $SIDE + ic] : T(0);
    const T v11 = bottom && right ? x[at + (ir + 1) * $SIDE + ic + 1] : T(0);
    const T upper = (v01 - v00) * wc + v00, lower = (v11 - v10) * wc + v10;
    y = (lower - upper) * wr + upper;
    """),  # noqa: E501 (one line of C, as it was with 784)
)

# One tiny kernel compiled (NVRTC) and launched when a CUDA device is chosen: y = 2x + 1.
PROBE = ("T x", "T y", "y = x + x + T(1);")


def activation_kernel(template: tuple[str, str, str], act) -> tuple[str, str, str]:
    """``template`` with ``act``'s CUDA expressions (``gpumlp.model.Activation``) filled in."""
    in_params, out_params, body = template
    return in_params, out_params, body.format(f=act.cuda_f, grad=act.cuda_grad)
