"""Random geometric augmentation: exact identity at zero strength, known transforms, drawn ranges,
the same bits on numpy and the strict fake device, and digits that stay digits."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gpumlp.backends.registry import get_backend
from gpumlp.backends.warp import Warp
from gpumlp.errors import ConfigError
from gpumlp.training.augment import KINDS, AugmentConfig, Augmenter, gaussian_matrix, parse_kinds
from standins.fake_device import FAKE, DeviceMixError, counters

COMBOS = [c for n in range(1, 4) for c in itertools.combinations(KINDS, n)]  # all 7 non-empty
ZERO = dict(shift=0.0, rotate=0.0, scale=0.0, shear=0.0, alpha=0.0)
ONLY_ROTATE = dict(shift=0.0, scale=0.0, shear=0.0)


def backend(device: str):
    return FAKE if device == "fake" else get_backend(device)


def augment(device, kinds, X, *coords, seed=7, dtype=np.float32, **strengths):
    """Augment host images X on ``device``; the result back on the host."""
    be = backend(device)
    aug = Augmenter(be, AugmentConfig(kinds, **strengths), seed, dtype=dtype)
    return be.to_numpy(aug(be.asarray(X, dtype=dtype), *coords))


def draw(device, kinds, b, *coords, seed=7, **strengths) -> Warp:
    """The drawn transforms, on the host (None where a kind is off)."""
    be = backend(device)
    w = Augmenter(be, AugmentConfig(kinds, **strengths), seed).draw(b, *coords)
    return Warp(*(None if a is None else be.to_numpy(a) for a in w))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Six 'images' in [0, 1] with many exact 0s and 1s, as MNIST has, float32 on the host."""
    X = np.random.default_rng(0).random((6, 784), dtype=np.float32)
    X[X < 0.3] = 0
    X[X > 0.8] = 1
    return X


def one_pixel(b: int, row: int, col: int) -> np.ndarray:
    X = np.zeros((b, 28, 28), dtype=np.float32)
    X[:, row, col] = 1
    return X.reshape(b, 784)


# ---------------------------------------------------------------- whole-batch properties


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kinds", COMBOS, ids="+".join)
def test_zero_strength_is_the_exact_identity(device, kinds, dtype, images):
    out = augment(device, kinds, images, 3, 1, dtype=dtype, **ZERO)
    np.testing.assert_array_equal(out, images.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kinds", COMBOS, ids="+".join)
def test_keeps_shape_dtype_range_and_leaves_the_input_alone(device, kinds, dtype, images):
    be = backend(device)
    X = be.asarray(images, dtype=dtype)
    out = Augmenter(be, AugmentConfig(kinds), seed=1, dtype=dtype)(X, 0, 0)
    host = be.to_numpy(out)
    assert host.shape == (6, 784) and host.dtype == dtype
    assert host.min() >= 0 and host.max() <= 1
    np.testing.assert_array_equal(be.to_numpy(X), images.astype(dtype))  # X itself untouched
    assert np.abs(host - images).mean() > 0.05  # and the images did change


def test_same_coords_same_images_other_coords_or_seed_other_images(device, images):
    kinds = ("affine", "elastic")
    first = augment(device, kinds, images, 2, 5)
    np.testing.assert_array_equal(augment(device, kinds, images, 2, 5), first)
    for other in (
        augment(device, kinds, images, 2, 6),
        augment(device, kinds, images, 5, 2),
        augment(device, kinds, images, 2, 5, seed=8),
    ):
        assert np.abs(other - first).mean() > 0.05
    for w in (draw(device, kinds, 6, 2, 5), draw(device, kinds, 6, 2, 6)):  # per image, too
        assert len(np.unique(w.A[:, 0, 0])) == 6 and len(np.unique(w.D[:, 0, 14, 14])) == 6


@pytest.mark.parametrize("kinds", COMBOS, ids="+".join)
def test_numpy_and_the_fake_device_agree_bit_for_bit(kinds, images):
    np.testing.assert_array_equal(augment("fake", kinds, images, 4, 2), augment("cpu", kinds, images, 4, 2))
    for a, b in zip(draw("fake", kinds, 6, 4, 2), draw("cpu", kinds, 6, 4, 2)):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_a_call_moves_nothing_between_host_and_device(images):
    aug = Augmenter(FAKE, AugmentConfig(KINDS), seed=1)  # constants move once, here
    X = FAKE.asarray(images)
    counters.reset()
    for batch in range(3):
        aug(X, 0, batch)
    assert (counters.to_device, counters.to_host, counters.syncs) == (0, 0, 0)


def test_the_fake_functions_augment_needs_stay_strict():
    host = np.linspace(-2, 2, 5)
    for f in (FAKE.xp.floor, FAKE.xp.cos, FAKE.xp.sin, lambda a: FAKE.xp.clip(a, -1, 1)):
        with pytest.raises(DeviceMixError):
            f(host)
    np.testing.assert_array_equal(FAKE.to_numpy(FAKE.xp.clip(FAKE.asarray(host), -1, 1)), np.clip(host, -1, 1))


def test_off_returns_an_equal_copy(images):
    X = images.copy()
    out = Augmenter(get_backend("cpu"), AugmentConfig(), seed=0)(X, 0, 0)
    np.testing.assert_array_equal(out, images)
    assert out is not X


# ---------------------------------------------------------------- known transforms


def test_shift_moves_a_pixel_by_the_drawn_translation(device):
    """The source is s = p + t, so the image moves by −t; bilinear interpolation spreads the pixel
    over its four new neighbours with weights whose sum is 1 and whose centre of mass is q − t."""
    b, q = 32, np.array([14.0, 10.0])
    t = draw(device, ("shift",), b, 1, 2, shift=2.0).t  # (b, 2)
    out = augment(device, ("shift",), one_pixel(b, 14, 10), 1, 2, shift=2.0).reshape(b, 28, 28)
    mass = out.sum(axis=(1, 2))
    rows, cols = np.indices((28, 28))
    centre = np.stack([(out * rows).sum(axis=(1, 2)), (out * cols).sum(axis=(1, 2))], axis=1) / mass[:, None]
    np.testing.assert_allclose(mass, 1, atol=1e-6)
    np.testing.assert_allclose(centre, q - t, atol=1e-5)
    assert np.abs(t).max() > 1  # the test saw real moves


def test_integer_translation_shifts_exactly_and_far_ones_leave_nothing(device, images):
    be = backend(device)
    aug = Augmenter(be, AugmentConfig(("shift",)), seed=0)
    X = be.asarray(images)
    t = be.asarray(np.array([[3, -2], [0, 0], [-1, 5], [100, 0], [0, -60], [-28, 0]], dtype=np.float32))
    out = be.to_numpy(aug.warp(X, Warp(None, t, None))).reshape(6, 28, 28)
    img = images.reshape(6, 28, 28)
    expected = np.zeros_like(img)
    expected[0, :-3, 2:] = img[0, 3:, :-2]  # out[r, c] = X[r + 3, c − 2]
    expected[1] = img[1]
    expected[2, 1:, :-5] = img[2, :-1, 5:]
    np.testing.assert_array_equal(out, expected)  # rows 3–5: moved out of the image, zeros


def test_a_90_degree_rotation_about_the_centre_is_exact(device, images):
    be = backend(device)
    aug = Augmenter(be, AugmentConfig(("affine",)), seed=0)
    A = np.tile(np.array([[0, -1], [1, 0]], dtype=np.float32), (6, 1, 1))  # (6, 2, 2)
    w = Warp(be.asarray(A), be.asarray(np.zeros((6, 2), np.float32)), None)
    out = be.to_numpy(aug.warp(be.asarray(images), w)).reshape(6, 28, 28)
    # s − c = A (p − c): out[r, c] = X[27 − c, r], a quarter turn clockwise
    np.testing.assert_array_equal(out, np.rot90(images.reshape(6, 28, 28), k=-1, axes=(1, 2)))


# ---------------------------------------------------------------- the drawn parameters


def test_translations_stay_within_shift(device):
    t = draw(device, ("shift",), 2000, 0, 0, shift=2.0).t
    assert t.shape == (2000, 2) and np.abs(t).max() <= 2 and np.abs(t).max() > 1.95
    assert np.abs(draw(device, ("affine",), 2000, 0, 0, shift=0.5).t).max() <= 0.5


def test_rotations_stay_within_rotate(device):
    A = draw(device, ("affine",), 2000, 0, 0, rotate=10.0, **ONLY_ROTATE).A  # (2000, 2, 2)
    angles = np.degrees(np.arctan2(A[:, 1, 0], A[:, 0, 0]))
    assert np.abs(angles).max() <= 10 + 1e-4 and np.abs(angles).max() > 9.5
    np.testing.assert_allclose(A[:, 0, 0], A[:, 1, 1], atol=1e-6)  # a pure rotation
    np.testing.assert_allclose(A[:, 0, 1], -A[:, 1, 0], atol=1e-6)


def test_scale_and_shear_stay_within_their_strengths(device):
    A = draw(device, ("affine",), 2000, 0, 0, rotate=0.0, shear=0.0, scale=0.2).A
    assert np.abs(A[:, [0, 1], [1, 0]]).max() == 0  # diagonal
    diag = A[:, [0, 1], [0, 1]]  # (2000, 2)
    assert diag.min() >= 0.8 and diag.max() <= 1.2 and diag.min() < 0.81 and diag.max() > 1.19
    A = draw(device, ("affine",), 2000, 0, 0, rotate=0.0, scale=0.0, shear=0.3).A
    np.testing.assert_array_equal(A[:, [0, 1, 1], [0, 0, 1]], np.tile([1, 0, 1], (2000, 1)))  # [[1, k], [0, 1]]
    assert np.abs(A[:, 0, 1]).max() <= 0.3 and np.abs(A[:, 0, 1]).max() > 0.29


def test_independent_draws_per_axis(device):
    """Row and column scale factors, and row and column elastic fields, are drawn separately."""
    A = draw(device, ("affine",), 2000, 0, 0, rotate=0.0, shear=0.0).A
    assert abs(np.corrcoef(A[:, 0, 0], A[:, 1, 1])[0, 1]) < 0.1
    D = draw(device, ("elastic",), 256, 0).D
    assert abs(np.corrcoef(D[:, 0].ravel(), D[:, 1].ravel())[0, 1]) < 0.1


def test_elastic_amplitude_scales_with_alpha_and_has_zero_mean(device):
    D34 = draw(device, ("elastic",), 512, 3, alpha=34.0).D  # (512, 2, 28, 28)
    D17 = draw(device, ("elastic",), 512, 3, alpha=17.0).D
    assert D34.shape == (512, 2, 28, 28)
    np.testing.assert_allclose(D34, 2 * D17, rtol=1e-5, atol=1e-5)
    # Away from the zero-padded border, α G F Gᵀ with F uniform in [−1, 1) (variance 1/3) has the
    # std α / √3 · Σ k², and Σ k² ≈ 1 / (2 σ √π) for a normalised Gaussian kernel k of std σ.
    inner = D34[:, :, 10:18, 10:18]
    expected = 34.0 / math.sqrt(3) / (2 * 4.0 * math.sqrt(math.pi))  # ≈ 1.38 pixels
    assert abs(inner.std() / expected - 1) < 0.1
    assert abs(inner.mean()) < 0.1 * expected  # the −α(G1)(G1)ᵀ term centres the field


def test_elastic_fields_are_smooth_for_large_sigma_and_rough_for_small(device):
    def neighbour_correlation(sigma):
        D = draw(device, ("elastic",), 256, 1, sigma=sigma).D[:, :, 6:22, 6:22]
        return np.corrcoef(D[..., :-1].ravel(), D[..., 1:].ravel())[0, 1]

    assert neighbour_correlation(4.0) > 0.95
    assert neighbour_correlation(0.3) < 0.2


def test_gaussian_matrix_is_a_normalised_symmetric_kernel():
    G = gaussian_matrix(2.0)
    np.testing.assert_allclose(G, G.T)
    np.testing.assert_allclose(G[14].sum(), 1, rtol=1e-6)  # all of the kernel fits: sum 1
    assert G[0].sum() < 0.6  # at the border, zero padding cuts the kernel in half
    np.testing.assert_allclose(G[14, 14 + np.arange(-3, 4)], G[14, 14] * np.exp(-(np.arange(-3, 4) ** 2) / 8.0))


# ---------------------------------------------------------------- real digits


def test_augmented_mnist_digits_keep_their_ink(mnist):
    """Default strengths: average ink (pixel mass) within 15% per kind, and most of every digit
    still overlaps the original (correlation) for shift and affine."""
    X = mnist[0][:1000]
    for kinds in (("shift",), ("affine",), ("elastic",), ("affine", "elastic")):
        out = Augmenter(get_backend("cpu"), AugmentConfig(kinds), seed=0)(X, 0, 0)
        ratio = out.sum(axis=1).mean() / X.sum(axis=1).mean()
        assert 0.85 < ratio < 1.15, (kinds, ratio)
        Xc, Oc = X - X.mean(axis=1, keepdims=True), out - out.mean(axis=1, keepdims=True)
        corr = (Xc * Oc).sum(axis=1) / np.sqrt((Xc * Xc).sum(axis=1) * (Oc * Oc).sum(axis=1))
        assert corr.mean() > 0.4, (kinds, corr.mean())


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "spec,kinds",
    [
        ("none", ()),
        ("", ()),
        (" None ", ()),
        ("affine", ("affine",)),
        ("elastic,affine,elastic", ("affine", "elastic")),
    ],
)
def test_parse_kinds(spec, kinds):
    assert parse_kinds(spec) == kinds


@pytest.mark.parametrize("spec", ["rotate", "affine,", "affine,bogus"])
def test_parse_kinds_names_the_unknown_kind_and_the_choices(spec):
    with pytest.raises(
        ConfigError, match=r"unknown --augment '.*': choose none, shift, affine, elastic or a comma list"
    ):
        parse_kinds(spec)


def test_config_normalises_kinds():
    assert AugmentConfig(("elastic", "affine", "elastic")).kinds == ("affine", "elastic")
    assert AugmentConfig("shift,elastic").kinds == ("shift", "elastic")
    assert AugmentConfig().kinds == ()


@pytest.mark.parametrize(
    "kwargs,option",
    [
        (dict(kinds=("flip",)), "--augment"),
        (dict(shift=-1.0), "--shift"),
        (dict(rotate=-5.0), "--rotate"),
        (dict(scale=-0.1), "--scale"),
        (dict(scale=1.0), "--scale"),
        (dict(shear=float("nan")), "--shear"),
        (dict(alpha=-34.0), "--elastic-alpha"),
        (dict(kinds=("elastic",), sigma=0.0), "--elastic-sigma"),
    ],
)
def test_config_rejects_bad_options_naming_the_option(kwargs, option):
    with pytest.raises(ConfigError, match=f"^{option}|{option} '"):
        AugmentConfig(**kwargs)


def test_sigma_zero_is_fine_without_elastic():
    assert AugmentConfig(("affine",), sigma=0.0).sigma == 0.0
