"""CIFAR-10-C (Hendrycks & Dietterich, ICLR 2019): load the official arrays, or
regenerate the 15 corruptions x 5 severities at the CIFAR-10 parameters of
their `make_cifar_c.py` (repo hendrycks/robustness, ImageNet-C/create_c/).

The official `.npy` files are the reference for evaluation; `corrupt` exists
for tests, smoke runs and images without a released corrupted copy. It is
written with torch/numpy/Pillow (the original needs skimage, OpenCV, SciPy and
ImageMagick via wand), batched over images. Differences from the original:

- Randomness is a numpy Generator seeded from `seed`, so pixel noise differs
  from the released files (the distribution and parameters are the same).
- frost: the original blends crops of six frost photographs that ship with its
  code; we do not ship them and synthesise a frost-like texture instead (a
  plasma fractal plus fine crystalline streaks, white-blue tint, mean ~0.6).
  The blend `clip(a*x + b*frost)` and the (a, b) per severity are the
  original's; the texture, and so the images, are not.
- motion_blur and the snow streaks: ImageMagick's MotionBlurImage is
  re-implemented (one-sided line kernel of width 2*ceil(radius)+1, Gaussian
  weights exp(-i^2/2 sigma^2), integer offsets along the angle, edges
  replicated); ImageMagick's own edge handling and rounding may differ.
- glass_blur: the same sequential local pixel moves as the released files,
  vectorised over the batch. The original's "swap" `x[h, w], x[h', w'] =
  x[h', w'], x[h, w]` runs on numpy views: x[h, w] takes x[h', w']'s value and
  x[h', w'] keeps its own, as the right-hand view now shows it. A copy, not a swap.
- skimage/cv2/scipy filters are replaced by torch convolutions with the same
  kernels and border modes (skimage `gaussian`: truncate 4, 'nearest';
  cv2 filter2D / warpAffine: reflect-101; scipy map_coordinates and zoom: order 1).
- Float inputs are quantised to uint8 before the Pillow-based corruptions
  (pixelate, jpeg_compression), as CIFAR images always are.
- uint8 outputs are truncated, like `np.uint8(...)` in the original.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from advss.attacks.unforeseen import fog_map, fog_n_vars

CORRUPTIONS = [
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
    "motion_blur", "zoom_blur", "snow", "frost", "fog", "brightness", "contrast",
    "elastic_transform", "pixelate", "jpeg_compression",
]
SEVERITIES = (1, 2, 3, 4, 5)
PER_SEVERITY = 10000  # CIFAR-10 test set size; the .npy files stack severities 1..5


# ---------------------------------------------------------------- loader
def load_cifar10c(directory, corruption, severity):
    """(x uint8 N x 3 x 32 x 32, y int64 N) for one corruption and severity
    from the official CIFAR-10-C files `<corruption>.npy` and `labels.npy`."""
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity!r}")
    directory = Path(directory)
    arrays = []
    for name in (f"{corruption}.npy", "labels.npy"):
        path = directory / name
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10-C file missing: {path} (download CIFAR-10-C from "
                                    "https://zenodo.org/record/2535967 and point to its folder)")
        arrays.append(np.load(path, mmap_mode="r"))
    images, labels = arrays
    if images.shape[0] != len(labels) or images.shape[0] % 5 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"{directory / (corruption + '.npy')}: expected 5*N x 32 x 32 x 3 images with as "
                         f"many labels, got {images.shape} and {labels.shape}")
    n = images.shape[0] // 5  # 10000 in the official files
    part = slice((severity - 1) * n, severity * n)
    x = torch.from_numpy(np.array(images[part])).permute(0, 3, 1, 2).contiguous()
    return x.to(torch.uint8), torch.from_numpy(np.asarray(labels[part]).astype(np.int64))


# ---------------------------------------------------------------- filter helpers
def _pad(x, p, mode):
    """Pad NCHW by p: 'nearest' (edge), 'reflect101' (cv2 default), 'symmetric' (scipy 'reflect')."""
    if p == 0:
        return x
    if mode == "nearest":
        return F.pad(x, (p,) * 4, mode="replicate")
    if mode == "reflect101":
        return F.pad(x, (p,) * 4, mode="reflect")
    x = torch.cat([x[..., :p, :].flip(-2), x, x[..., -p:, :].flip(-2)], -2)
    return torch.cat([x[..., :p].flip(-1), x, x[..., -p:].flip(-1)], -1)


def _filter(x, kernel, mode):
    """Correlate each channel of NCHW x with a 2-D kernel (odd size), border `mode`."""
    k = kernel.to(x)
    p = k.shape[-1] // 2
    c = x.shape[1]
    return F.conv2d(_pad(x, p, mode), k.expand(c, 1, *k.shape[-2:]), groups=c)


def _gaussian_kernel(sigma, truncate=4.0):
    """skimage/scipy Gaussian: radius int(truncate*sigma + 0.5)."""
    r = int(truncate * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()


def _gaussian(x, sigma, mode="nearest", truncate=4.0):
    return _filter(x, _gaussian_kernel(sigma, truncate), mode)


def _uniform(rng, lo, hi, shape):
    return torch.from_numpy(rng.uniform(lo, hi, shape)).float()


def _motion_kernel(radius, sigma, angle_deg):
    """ImageMagick MotionBlurImage kernel as a dense (2w+1)^2 correlation kernel
    centred on the pixel: weights exp(-i^2/2 sigma^2) at integer offsets i*(cos, sin)."""
    width = 2 * math.ceil(radius) + 1  # ImageMagick GetOptimalKernelWidth1D
    i = np.arange(width)
    w = np.exp(-(i ** 2) / (2 * sigma ** 2))
    w /= w.sum()
    a = math.radians(angle_deg)
    dx, dy = np.ceil(i * math.cos(a) - 0.5).astype(int), np.ceil(i * math.sin(a) - 0.5).astype(int)
    k = np.zeros((2 * width + 1, 2 * width + 1))
    np.add.at(k, (width + dy, width + dx), w)
    return torch.from_numpy(k).float()


def _motion_blur(x, radius, sigma, angles):
    """Per-image motion blur with edge replication."""
    return torch.cat([_filter(xi[None], _motion_kernel(radius, sigma, a), "nearest") for xi, a in zip(x, angles)])


def _clipped_zoom(x, z):
    """Zoom the centre of NCHW x by z (bilinear, corners aligned as scipy zoom), crop back to size."""
    h = x.shape[-1]
    ch = int(math.ceil(h / z))
    top = (h - ch) // 2
    size = int(round(ch * z))
    out = F.interpolate(x[..., top:top + ch, top:top + ch], size=(size, size), mode="bilinear", align_corners=True)
    t = (size - h) // 2
    return out[..., t:t + h, t:t + h]


def _gray(x):
    """cv2 RGB2GRAY luma (ITU-R BT.601)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _plasma(rng, n, mapsize, wibbledecay):
    """Hendrycks' plasma_fractal: wibble 100 and uniform(-wibble, wibble) * wibble,
    i.e. fog_map with wibble 100^2 and decay squared, diamond roll 1."""
    vs = [torch.from_numpy(rng.uniform(0, 1, (n, *s))).double() for s in fog_n_vars(mapsize)]
    return fog_map(vs, n, mapsize, wibble=100.0 ** 2, decay=wibbledecay ** 2, diamond_roll=1).float()


def _pil_map(x, fn):
    """Apply fn(PIL image) -> PIL image to each image of float NCHW x (quantised to uint8)."""
    out = []
    for xi in (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy():
        out.append(np.asarray(fn(Image.fromarray(xi)), dtype=np.float32) / 255)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- corruptions
# Parameters per severity 1..5 are copied from make_cifar_c.py (CIFAR-10 values).
def gaussian_noise(x, s, rng):
    c = [0.04, 0.06, .08, .09, .10][s - 1]
    return x + torch.from_numpy(rng.normal(0, c, x.shape)).float()


def shot_noise(x, s, rng):
    c = [500, 250, 100, 75, 50][s - 1]
    return torch.from_numpy(rng.poisson(x.double().numpy() * c) / c).float()


def impulse_noise(x, s, rng):
    c = [.01, .02, .03, .05, .07][s - 1]  # skimage random_noise 's&p', salt_vs_pepper 0.5
    flip = torch.from_numpy(rng.random(x.shape) < c)
    salt = torch.from_numpy(rng.random(x.shape) < 0.5).float()
    return torch.where(flip, salt, x)


def defocus_blur(x, s, rng):
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s - 1]
    t = torch.arange(-8, 9, dtype=torch.float32)  # original: L = arange(-8, 9) for radius <= 8
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    g = torch.exp(-0.5 * (torch.arange(-1.0, 2.0) / alias) ** 2)  # cv2.GaussianBlur ksize 3
    g = g / g.sum()
    disk = _filter(disk[None, None], g[:, None] * g[None, :], "reflect101")[0, 0]
    return _filter(x, disk, "reflect101")


def glass_blur(x, s, rng):
    sigma, delta, iters = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s - 1]
    x = (_gaussian(x, sigma) * 255).floor() / 255  # np.uint8 round trip, as the original
    n, _, h, w = x.shape
    b = torch.arange(n)
    for _ in range(iters):
        for i in range(h - delta, delta, -1):
            for j in range(w - delta, delta, -1):
                dx, dy = torch.from_numpy(rng.integers(-delta, delta, (2, n)))  # np.random.randint(-d, d)
                x[b, :, i, j] = x[b, :, i + dy, j + dx]  # a copy, as released (module docstring)
    return _gaussian(x, sigma)


def motion_blur(x, s, rng):
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s - 1]
    return _motion_blur(x, radius, sigma, rng.uniform(-45, 45, len(x)))


def zoom_blur(x, s, rng):
    zooms = np.arange(1, [1.06, 1.11, 1.16, 1.21, 1.26][s - 1], 0.01)
    out = sum(_clipped_zoom(x, z) for z in zooms)
    return (x + out) / (len(zooms) + 1)


def snow(x, s, rng):
    loc, scale, zoom, thr, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)][s - 1]
    n, _, h, w = x.shape
    layer = _clipped_zoom(torch.from_numpy(rng.normal(loc, scale, (n, 1, h, w))).float(), zoom)
    layer = torch.where(layer < thr, torch.zeros_like(layer), layer)
    layer = (layer.clamp(0, 1) * 255).floor() / 255  # saved as an 8-bit PNG in the original
    layer = _motion_blur(layer, radius, sigma, rng.uniform(-135, -45, n))
    x = keep * x + (1 - keep) * torch.max(x, _gray(x) * 1.5 + 0.5)
    return x + layer + layer.flip(-1, -2)  # + np.rot90(layer, 2)


def _frost_texture(rng, n, h, w):
    """Synthetic frost (see module docstring): fractal haze plus fine streaks, tinted."""
    size = 2 ** math.ceil(math.log2(max(h, w)))
    haze = _plasma(rng, n, size, 1.5)[..., :h, :w]  # decay 1.5: more fine detail than fog (3)
    streaks = _motion_blur(torch.from_numpy(rng.random((n, 1, h, w)) ** 8).float(), 3, 1.5, rng.uniform(0, 180, n))
    tex = (0.35 + 0.45 * haze + 1.5 * streaks).clamp(0, 1)  # mean ~0.6: our guess at the photographs' brightness
    tint = torch.tensor([0.85, 0.92, 1.0]).view(1, 3, 1, 1)  # frost photographs are white-blue
    return tex * tint


def frost(x, s, rng):
    a, b = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s - 1]
    return a * x + b * _frost_texture(rng, *x.shape[:1], *x.shape[2:])


def fog(x, s, rng):
    c, decay = [(.2, 3), (.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s - 1]
    h, w = x.shape[-2:]
    max_val = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    x = x + c * _plasma(rng, len(x), 32, decay)[..., :h, :w]  # mapsize 32, as the original
    return x * max_val / (max_val + c)


def brightness(x, s, rng):
    c = [.05, .1, .15, .2, .3][s - 1]
    v = x.max(1, keepdim=True).values  # HSV value; hue and saturation are kept
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


def contrast(x, s, rng):
    c = [.75, .5, .4, .3, 0.15][s - 1]
    means = x.mean((2, 3), keepdim=True)
    return (x - means) * c + means


def _solve_affine(src, dst):
    """2x3 M with M @ [p; 1] = q for three point pairs (cv2.getAffineTransform)."""
    a = np.concatenate([src, np.ones((3, 1))], 1)
    return np.linalg.solve(a, dst).T


def elastic_transform(x, s, rng):
    n, _, h, w = x.shape
    alpha, sigma, affine = [(0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06),
                            (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)][s - 1]
    alpha, sigma, affine = alpha * h, sigma * h, affine * h  # fractions of IMSIZE = 32
    centre, half = np.float32([h, w]) // 2, min(h, w) // 3
    pts = np.float32([centre + half, [centre[0] + half, centre[1] - half], centre - half])
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    thetas = []
    for _ in range(n):  # cv2.warpAffine samples src at M^-1 (dst); points are (x, y)
        m = _solve_affine(pts, pts + rng.uniform(-affine, affine, pts.shape))
        inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
        thetas.append(torch.from_numpy(inv).float())
    inv = torch.stack(thetas)
    sx = inv[:, 0, 0, None, None] * xx + inv[:, 0, 1, None, None] * yy + inv[:, 0, 2, None, None]
    sy = inv[:, 1, 0, None, None] * xx + inv[:, 1, 1, None, None] * yy + inv[:, 1, 2, None, None]
    grid = torch.stack([sx / (w - 1) * 2 - 1, sy / (h - 1) * 2 - 1], -1)  # pixel centres, reflect-101
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True)
    if alpha > 0:
        d = _uniform(rng, -1, 1, (n, 2, h, w))
        d = _gaussian(d, sigma, mode="symmetric", truncate=3) * alpha  # skimage gaussian mode='reflect'
        px, py = xx + d[:, 0], yy + d[:, 1]
        grid = torch.stack([(2 * px + 1) / w - 1, (2 * py + 1) / h - 1], -1)  # scipy 'reflect' = half-sample
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return x


def pixelate(x, s, rng):
    c = [0.95, 0.9, 0.85, 0.75, 0.65][s - 1]
    h, w = x.shape[-2:]
    return _pil_map(x, lambda im: im.resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX))


def _jpeg(im, quality):
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(buf)


def jpeg_compression(x, s, rng):
    q = [80, 65, 58, 50, 40][s - 1]
    return _pil_map(x, lambda im: _jpeg(im, q))


_FUNCS = {name: globals()[name] for name in CORRUPTIONS}


def corrupt(x, corruption, severity, seed=0):
    """Corrupt a batch N x 3 x H x W (uint8, or float in [0,1]); returns the same shape and dtype."""
    if corruption not in _FUNCS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be in 1..5, got {severity!r}")
    squeeze = x.dim() == 3
    xb = x[None] if squeeze else x
    is_uint8 = xb.dtype == torch.uint8
    xf = xb.detach().cpu().float() / 255 if is_uint8 else xb.detach().cpu().float()
    out = _FUNCS[corruption](xf.clone(), severity, np.random.default_rng(seed)).clamp(0, 1)
    if is_uint8:
        out = (out * 255 + 1e-3).floor().to(torch.uint8)  # 1e-3 absorbs float error; floor = np.uint8 truncation
    else:
        out = out.to(x.dtype)
    out = out.to(x.device)
    return out[0] if squeeze else out
