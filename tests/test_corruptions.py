"""CIFAR-10-C corruptions and loader (advss.corruptions)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advss.corruptions import CORRUPTIONS, corrupt, load_cifar10c


def images(n=8, seed=0):
    """Smooth random uint8 images with some texture, like downsampled photos."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    return (x * 220 + 15 * torch.rand(n, 3, 32, 32, generator=g)).to(torch.uint8)


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 == len(set(CORRUPTIONS))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_deterministic_shape_dtype_range(corruption):
    x = images()
    a, b = corrupt(x, corruption, 3, seed=7), corrupt(x, corruption, 3, seed=7)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == torch.uint8
    xf = x.float() / 255
    out = corrupt(xf, corruption, 3, seed=7)
    assert out.shape == xf.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert corrupt(x[0], corruption, 1, seed=0).shape == x[0].shape  # single image


def affine_residual(clean, out, steps=80, crop=4):
    """Mean absolute difference (0-255 scale) between `out` and the best affine warp of
    `clean`, fitted per image by gradient descent, on the central crop (borders are
    filled differently by every warp).

    This is the distance "modulo a global affine transformation of the image plane": a
    photometric corruption (noise, blur, fog, ...) is not an affine warp, so for those it
    is about the plain pixel distance, while for elastic_transform it removes the random
    affine part and keeps the elastic one. That matters because at make_cifar_c.py's
    parameters severity 1 is a pure random affine (corner jitter 0.08·32 = 2.56 px) and
    severity 5 a smaller affine (0.96 px) plus an elastic field: in raw pixels severity 1
    is farther (mean |Δ| ≈ 24 vs 13 on these images), although Hendrycks et al. rank the
    elastic severities by how much they distort local structure, which a classifier
    feels and a global warp barely changes.
    """
    a, b = clean.float() / 255, out.float() / 255
    theta = torch.eye(2, 3).repeat(len(a), 1, 1).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.01)  # 0.01: ~1 px of corner motion per step on 32 px
    inner = (..., slice(crop, -crop), slice(crop, -crop))
    warp = lambda: F.grid_sample(a, F.affine_grid(theta, list(a.shape), align_corners=False),
                                 align_corners=False, padding_mode="reflection")
    for _ in range(steps):
        loss = (warp() - b)[inner].abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 255 * (warp() - b)[inner].abs().mean().item()


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_severity_5_farther_than_severity_1(corruption):
    """'Farther' = affine_residual (see its docstring), which holds for all 15, elastic included."""
    x = images(seed=1)
    dist = lambda s: affine_residual(x, corrupt(x, corruption, s, seed=3))
    assert dist(5) > dist(1) > 0


def test_elastic_severity_1_is_the_larger_raw_pixel_change():
    """Why the registered distance is needed: raw pixel distance ranks elastic backwards."""
    x = images(seed=1)
    raw = lambda s: (corrupt(x, "elastic_transform", s, seed=3).float() - x.float()).abs().mean().item()
    assert raw(1) > raw(5)


def test_loader_reads_fake_files(tmp_path):
    n = 3  # images per severity
    imgs = np.arange(5 * n * 32 * 32 * 3, dtype=np.int64).reshape(5 * n, 32, 32, 3) % 251
    np.save(tmp_path / "fog.npy", imgs.astype(np.uint8))
    np.save(tmp_path / "labels.npy", (np.arange(5 * n) % 10).astype(np.uint8))
    x, y = load_cifar10c(tmp_path, "fog", 2)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(imgs[n:2 * n].astype(np.uint8)).permute(0, 3, 1, 2))
    assert y.tolist() == [3, 4, 5]


def test_loader_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        load_cifar10c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_cifar10c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="unknown corruption"):
        load_cifar10c(tmp_path, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        load_cifar10c(tmp_path, "snow", 6)


def released_glass_shuffle(x, c, offsets):
    """make_cifar_c.py's glass-blur loop on one H×W×3 uint8 image, transcribed as written
    (CIFAR-10 range(32 - c[1], c[1], -1)); `offsets()` stands in for np.random.randint(-c[1], c[1], size=(2,))."""
    for i in range(c[2]):
        for h in range(32 - c[1], c[1], -1):
            for w in range(32 - c[1], c[1], -1):
                dx, dy = offsets()
                h_prime, w_prime = h + dy, w + dx
                # swap
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return x


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_glass_blur_moves_pixels_as_the_released_files(severity):
    """The original's tuple 'swap' on numpy views copies x[h', w'] into x[h, w] and leaves
    x[h', w'] as it was: the released CIFAR-10-C, which `corrupt` must reproduce. The same
    offsets (advss draws them per position for the whole batch, (2, N) at a time) and the
    same Gaussian on both sides, so what is compared is the pixel moves."""
    from advss.corruptions import _gaussian

    c = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][severity - 1]
    x = images(n=3, seed=severity).float() / 255
    got = corrupt(x, "glass_blur", severity, seed=11)
    quantised = np.uint8(_gaussian(x, c[0]).numpy() * 255).transpose(0, 2, 3, 1).copy()
    rng = np.random.default_rng(11)
    draws = np.stack([rng.integers(-c[1], c[1], (2, len(x))) for _ in range(c[2] * (32 - 2 * c[1]) ** 2)])
    moved = np.stack([released_glass_shuffle(q.copy(), c, iter(draws[:, :, k]).__next__) for k, q in enumerate(quantised)])
    ref = _gaussian(torch.from_numpy(moved).permute(0, 3, 1, 2).float() / 255, c[0]).clamp(0, 1)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert not torch.equal(torch.from_numpy(moved), torch.from_numpy(quantised))  # pixels did move
