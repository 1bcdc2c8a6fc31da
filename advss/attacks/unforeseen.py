"""The unforeseen-adversary suite of Kang et al. 2019 ("Testing robustness
against unforeseen adversaries", arXiv:1908.08016, code `ddkang/advex-uar`).

Ten attacks, because advex-uar has ten (its README and `--attack` choices:
pgd_linf, pgd_l2, fw_l1, jpeg_linf, jpeg_l2, jpeg_l1, elastic, fog, gabor,
snow). The "12 attacks" of our design notes could not be traced to any version
of advex-uar or its README that we could read, so we do not guess two more.

Calibration (`CALIBRATIONS`, each with its source): Kang et al. pick six eps
per attack by adversarially training models against the attack at many eps,
measuring ATA(attack, eps) (the best adversarial accuracy of those models) and
matching those values to the L-inf ATA at eps = 1..32 by linear assignment
(`advex_uar/analysis/calibrate_eps.py`, `--resol 32` for CIFAR-10). For 32-px
images they did this for seven attacks only. Fog, Gabor and Snow were calibrated
on ImageNet-100 (224 px) and have no 32-px calibration: at those eps Fog 8192
turns a 32-px image into fog and one 13-px snow flake covers much of it.
Calibrating them ourselves needs adversarial training of CIFAR-10 ResNets at a
grid of eps per attack (GPU-days), which we did not have, so they stay
UNCALIBRATED: reports mark their columns and leave them out of any claim.

Written from the paper and read against advex-uar's `advex_uar/attacks/*.py`;
no code copied. Every attack optimises a few perturbation variables by
maximising the cross-entropy of the model on the rendered image, exactly as
advex-uar does (signed or L2-normalised gradient steps, or Frank-Wolfe for L1),
then projects the variables back onto its threat model after every step.

Units: `eps` is in advex-uar's own units so that `CIFAR10_CALIBRATION` plugs
in as is: L-inf, L2, Gabor and Fog eps are on the 0-255 pixel scale; L1 eps is
the *mean* absolute change per pixel-channel on the 0-255 scale (total L1 =
eps * 3HW); JPEG eps bounds the perturbation of the quantised JPEG
coefficients; Elastic eps is the largest flow, in pixels; Snow eps scales the
snow layer in [0,1] units. Images here are [0,1] tensors; we convert.

Default step size: eps / sqrt(n_iter), the rule behind every step size in
advex-uar's CIFAR-10 calibration file (e.g. 1/sqrt(200) = 0.0707 for eps 1);
Fog, Gabor and Snow use advex-uar's fixed step 0.002236 on their variables
(ImageNet-100 calibration file).

Differences from advex-uar, on purpose:
- The random start is clamped to the image box before the first forward pass.
- JPEG-L1/-L2 keep each coefficient variable in [-2, 2] (advex-uar's `l1_max`)
  as an absolute box; advex-uar's Frank-Wolfe measures that box from the current
  iterate, which does not keep it.
- Fog is normalised to [0,1] per image; advex-uar normalises over the batch, so
  an image's attack depended on its batch-mates.
- Gabor keeps the sparse support of its random start (the paper's "sparse
  Gabor noise"); advex-uar's mask is inverted (`sp_conv == 0`) and, after the
  first step, zeroes the start's support and frees every other position.
- Snow projects the flake intensities after the last step too, so the returned
  image is inside the threat model; advex-uar skips the last projection.
- Snow line kernels are drawn densely with the same trapezoid profile as
  advex-uar's `weighted_line`, not with its index lists.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from advss.attacks.autoattack import eval_mode, make_generator

ADVEX_UAR_COMMIT = "576df2a8d864c335ada73f0495006bce498e6f9c"  # ddkang/advex-uar, the files read
# Calibrated eps from advex-uar `advex_uar/analysis/calibrations/cifar-10/calibs.out`
# (each entry there is [attack, eps, 200 iterations, step size]). That file has no
# CIFAR-10 calibration for Fog, Gabor or Snow: Kang et al. calibrate those on
# ImageNet-100 only (Fog and Snow are generated for ImageNet resolution), see
# IMAGENET100_CALIBRATION below.
CIFAR10_CALIBRATION = {
    "pgd_linf": [1, 2, 4, 8, 16, 32],
    "pgd_l2": [40, 80, 160, 320, 640, 2560],
    "fw_l1": [0.0634766, 0.1269531, 0.2539063, 0.5078125, 2.03125, 8.125],
    "jpeg_linf": [0.03125, 0.0625, 0.125, 0.25, 0.5, 1],
    "jpeg_l2": [0.25, 0.5, 1, 2, 4, 8],
    "jpeg_l1": [2, 8, 64, 256, 512, 1024],
    "elastic": [0.125, 0.25, 0.5, 1, 2, 8],
}
# From advex-uar `advex_uar/analysis/calibrations/imagenet-100/calibs.out`; NOT
# calibrated for CIFAR-10 (no such file exists), given for reference only.
IMAGENET100_CALIBRATION = {
    "fog": [128, 256, 512, 2048, 4096, 8192],
    "snow": [0.0625, 0.125, 0.25, 2, 4, 8],
    "gabor": [6.25, 12.5, 25, 400, 800, 1600],
}
CALIBRATIONS = {  # attack -> eps list and where it comes from
    **{a: {"eps": e, "calibrated_for": "cifar-10 (32 px)",
           "source": f"ddkang/advex-uar@{ADVEX_UAR_COMMIT}:advex_uar/analysis/calibrations/cifar-10/calibs.out"}
       for a, e in CIFAR10_CALIBRATION.items()},
    **{a: {"eps": e, "calibrated_for": "imagenet-100 (224 px) only: UNCALIBRATED for 32 px",
           "source": f"ddkang/advex-uar@{ADVEX_UAR_COMMIT}:advex_uar/analysis/calibrations/imagenet-100/calibs.out"}
       for a, e in IMAGENET100_CALIBRATION.items()},
}
UNCALIBRATED = frozenset(IMAGENET100_CALIBRATION)  # no 32-px calibration: marked in tables/figures, no claims
UNCALIBRATED_MARK = "†"


def label(attack: str) -> str:
    """The attack's name as reports show it: uncalibrated ones carry UNCALIBRATED_MARK."""
    return attack + UNCALIBRATED_MARK if attack in UNCALIBRATED else attack


FIXED_STEP = 0.002236  # Fog/Snow/Gabor step on their variables (ImageNet-100 calibs.out)
PIXEL = 255.0  # advex-uar's pixel scale
N_ITER = 200  # iterations used for every calibration in advex-uar


def _rand(gen, x, *shape):
    return torch.rand(shape, generator=gen, device=x.device)


def _randn(gen, x, *shape):
    return torch.randn(shape, generator=gen, device=x.device)


def _bview(t, like):
    """Per-example scalar t (N,) broadcast against `like`."""
    return t.view(-1, *([1] * (like.dim() - 1)))


def l2_norm(v):
    return v.flatten(1).norm(dim=1)


def rand_l2_ball(gen, x, shape, radius):
    """Uniform direction, radius*U^(1/d): advex-uar's L2 start."""
    v = _randn(gen, x, *shape)
    d = v[0].numel()
    r = _rand(gen, x, shape[0]) ** (1.0 / d) * radius
    return v / _bview(l2_norm(v), v) * _bview(r, v)


def rand_l1_ball(gen, x, shape, radius):
    """Uniform in the L1 ball (Barthe et al. 2005, Thm 1), as advex-uar's L1 start."""
    e = -torch.log(_rand(gen, x, *shape).clamp_min(1e-12))  # Exp(1)
    sign = torch.where(_rand(gen, x, *shape) < 0.5, -1.0, 1.0)
    y = -torch.log(_rand(gen, x, shape[0]).clamp_min(1e-12))
    return e * sign / _bview(e.flatten(1).sum(1) + y, e) * radius


def linf_step(v, g, step, eps, lo=None, hi=None):
    """Signed ascent step, clamp to |v| <= eps (and optionally to [lo, hi])."""
    v = torch.max(torch.min(v + step * g.sign(), eps), -eps)
    return v if lo is None else torch.max(torch.min(v, hi), lo)


def l2_step(v, g, step, eps):
    """L2-normalised ascent step, then rescale into the L2 ball of radius eps."""
    v = v + step * g / _bview(l2_norm(g) + 1e-12, g)
    return v * _bview(torch.clamp(eps / (l2_norm(v) + 1e-12), max=1.0), v)


def l1_box_vertex(g, radius, lo, hi):
    """argmax <g, v> over ||v||_1 <= radius, lo <= v <= hi (lo <= 0 <= hi).

    Greedy: push the largest-|g| coordinates to their box bound until the L1
    budget runs out (advex-uar's Frank-Wolfe oracle, vectorised).
    """
    gf = g.flatten(1)
    bound = torch.where(gf > 0, hi.flatten(1), -lo.flatten(1)) * (gf != 0)
    order = gf.abs().argsort(dim=1, descending=True)
    b = bound.gather(1, order)
    mag = torch.minimum((radius.view(-1, 1) - (b.cumsum(1) - b)).clamp_min(0), b)
    return (torch.zeros_like(gf).scatter(1, order, mag) * gf.sign()).view_as(g)


def fw_step(v, g, it, radius, lo, hi):
    """Frank-Wolfe with step 1/(it+1): stays in the (convex) ball-and-box."""
    return v + (l1_box_vertex(g, radius, lo, hi) - v) / (it + 1.0)


def gaussian_kernel(size, sigma, device=None):
    """Normalised 2-D Gaussian, size x size."""
    t = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k[:, None] * k[None, :]
    return k / k.sum()


class UnforeseenAttack:
    """One attack = a set of variables, a renderer and a projected ascent step.

    Subclasses define `init(x, gen) -> vars`, `render(x, vars) -> x_adv` and
    `step(vars, grads, it, x) -> vars` (which must project onto the threat model).
    """

    name = ""
    fixed_step = None  # attacks whose step is not eps-relative

    def __init__(self, eps, n_iter=N_ITER, step_size=None):
        self.eps, self.n_iter = float(eps), int(n_iter)
        default = self.fixed_step if self.fixed_step is not None else self.eps / math.sqrt(max(self.n_iter, 1))
        self.step_size = float(step_size) if step_size is not None else default

    def perturb(self, model, x, y, seed=0):
        """Return (x_adv, variables); the variables witness the threat model."""
        gen = make_generator(seed, x.device)
        x = x.detach().float()
        with eval_mode(model):
            vs = [v.detach() for v in self.init(x, gen)]
            for it in range(self.n_iter):
                vs = [v.requires_grad_(True) for v in vs]
                with torch.enable_grad():
                    loss = F.cross_entropy(model(self.render(x, vs)), y)
                    grads = torch.autograd.grad(loss, vs)
                with torch.no_grad():
                    vs = [v.detach() for v in self.step([v.detach() for v in vs], grads, it, x)]
            with torch.no_grad():
                return self.render(x, vs).clamp(0, 1), vs

    def __call__(self, model, x, y, seed=0):
        return self.perturb(model, x, y, seed)[0]


# ---------------------------------------------------------------- pixel Lp
class PGDLinf(UnforeseenAttack):
    """x + d, ||d||_inf <= eps/255, x + d in [0,1]; signed-gradient PGD."""

    name = "pgd_linf"

    def init(self, x, gen):
        e = self.eps / PIXEL
        return [((2 * _rand(gen, x, *x.shape) - 1) * e + x).clamp(0, 1) - x]

    def render(self, x, vs):
        return x + vs[0]

    def step(self, vs, gs, it, x):
        e = torch.tensor(self.eps / PIXEL, device=x.device)
        return [linf_step(vs[0], gs[0], self.step_size / PIXEL, e, -x, 1 - x)]


class PGDL2(UnforeseenAttack):
    """x + d, ||d||_2 <= eps/255, x + d in [0,1]; L2-normalised-gradient PGD."""

    name = "pgd_l2"

    def init(self, x, gen):
        d = rand_l2_ball(gen, x, x.shape, self.eps / PIXEL)
        return [(x + d).clamp(0, 1) - x]

    def render(self, x, vs):
        return x + vs[0]

    def step(self, vs, gs, it, x):
        d = l2_step(vs[0], gs[0], self.step_size / PIXEL, self.eps / PIXEL)
        return [(x + d).clamp(0, 1) - x]


class FWL1(UnforeseenAttack):
    """x + d, ||d||_1 <= eps*3HW/255, x + d in [0,1]; Frank-Wolfe (advex-uar `fw_l1`)."""

    name = "fw_l1"

    def radius(self, x):
        return torch.full((x.shape[0],), self.eps * x[0].numel() / PIXEL, device=x.device)

    def init(self, x, gen):
        return [(x + rand_l1_ball(gen, x, x.shape, self.radius(x)[:1])).clamp(0, 1) - x]

    def render(self, x, vs):
        return x + vs[0]

    def step(self, vs, gs, it, x):
        return [fw_step(vs[0], gs[0], it, self.radius(x), -x, 1 - x)]


# ---------------------------------------------------------------- JPEG
_JPEG_Y_TABLE = torch.tensor([  # ITU T.81 Annex K luminance quantisation table (quality 50)
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
_JPEG_C_TABLE = torch.full((8, 8), 99.0)  # T.81 chrominance table: 99 outside the top-left 4x4
_JPEG_C_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])
_RGB_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # JFIF
_YCC_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])  # JFIF inverse
_YCC_SHIFT = torch.tensor([0.0, 128.0, 128.0])  # chroma centred on 128 (JFIF)
JPEG_BOX = 2.0  # advex-uar JPEGAttack `l1_max`: per-coefficient bound for the L1/L2 variants


def _dct_matrix(device):
    """Orthonormal 8-point DCT-II matrix C (coefficients = C X C^T)."""
    n = torch.arange(8, dtype=torch.float32, device=device)
    c = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * 0.5
    c[0] /= math.sqrt(2)
    return c


def _to_blocks(img):
    n, h, w = img.shape
    return img.view(n, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4).reshape(n, -1, 8, 8)


def _from_blocks(blocks, h, w):
    n = blocks.shape[0]
    return blocks.view(n, h // 8, w // 8, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, h, w)


def jpeg_n_coeffs(h, w):
    """Coefficients of a 4:2:0 JPEG: one Y block per 8x8, one Cb and Cr per 16x16."""
    return 64 * (h * w // 64 + 2 * (h * w // 256))


def jpeg_roundtrip(x, offset):
    """Differentiable JPEG (quality 50, 4:2:0) of x in [0,1], adding `offset`
    (N x jpeg_n_coeffs) to the quantised coefficients before decoding.

    As in advex-uar (after Shin & Song's differentiable JPEG) the quantised
    coefficients are not rounded: the attack replaces rounding.
    """
    n, _, h, w = x.shape
    if h % 16 or w % 16:
        raise ValueError(f"JPEG attacks need H, W divisible by 16, got {h}x{w}")
    dev = x.device
    c = _dct_matrix(dev)
    ycc = torch.einsum("ij,njhw->nihw", _RGB_TO_YCC.to(dev), x * PIXEL) + _YCC_SHIFT.to(dev).view(1, 3, 1, 1)
    planes = [ycc[:, 0], F.avg_pool2d(ycc[:, 1:2], 2)[:, 0], F.avg_pool2d(ycc[:, 2:3], 2)[:, 0]]
    sizes = [p[0].numel() for p in planes]
    out = []
    for plane, off, table in zip(planes, offset.split(sizes, dim=1), (_JPEG_Y_TABLE, _JPEG_C_TABLE, _JPEG_C_TABLE)):
        table = table.to(dev)
        coeff = c @ (_to_blocks(plane) - 128) @ c.T / table
        coeff = coeff + off.reshape(coeff.shape)
        out.append(_from_blocks(c.T @ (coeff * table) @ c + 128, *plane.shape[1:]))
    up = lambda p: p.repeat_interleave(2, 1).repeat_interleave(2, 2)
    ycc = torch.stack([out[0], up(out[1]), up(out[2])], 1) - _YCC_SHIFT.to(dev).view(1, 3, 1, 1)
    rgb = torch.einsum("ij,njhw->nihw", _YCC_TO_RGB.to(dev), ycc)
    return rgb.clamp(0, PIXEL) / PIXEL


class _JPEGAttack(UnforeseenAttack):
    """JPEG(x) with the quantised coefficients moved by v/2, ||v||_p <= eps.

    The 1/2 is advex-uar's: its `noisy_round` adds eps*(0.5+0.5*v/eps-0.5) = v/2;
    keeping it keeps the calibrated eps meaningful.
    """

    def shape(self, x):
        return (x.shape[0], jpeg_n_coeffs(*x.shape[2:]))

    def render(self, x, vs):
        return jpeg_roundtrip(x, vs[0] / 2)


class JPEGLinf(_JPEGAttack):
    name = "jpeg_linf"

    def init(self, x, gen):
        return [(2 * _rand(gen, x, *self.shape(x)) - 1) * self.eps]

    def step(self, vs, gs, it, x):
        return [linf_step(vs[0], gs[0], self.step_size, torch.tensor(self.eps, device=x.device))]


class JPEGL2(_JPEGAttack):
    name = "jpeg_l2"

    def init(self, x, gen):
        return [rand_l2_ball(gen, x, self.shape(x), self.eps).clamp(-JPEG_BOX, JPEG_BOX)]

    def step(self, vs, gs, it, x):
        return [l2_step(vs[0], gs[0], self.step_size, self.eps).clamp(-JPEG_BOX, JPEG_BOX)]


class JPEGL1(_JPEGAttack):
    name = "jpeg_l1"

    def init(self, x, gen):
        radius = torch.tensor([self.eps], device=x.device)
        return [rand_l1_ball(gen, x, self.shape(x), radius).clamp(-JPEG_BOX, JPEG_BOX)]

    def step(self, vs, gs, it, x):
        box = torch.full_like(vs[0], JPEG_BOX)
        return [fw_step(vs[0], gs[0], it, torch.full((x.shape[0],), self.eps, device=x.device), -box, box)]


# ---------------------------------------------------------------- Elastic
ELASTIC_KERNEL, ELASTIC_STD = 25, 3.0  # advex-uar ElasticAttack defaults (kernel_size, kernel_std)


class Elastic(UnforeseenAttack):
    """Warp x by the base grid + Gaussian-smoothed flow f, ||f||_inf <= eps pixels.

    The flow is in grid_sample's [-1,1] units (eps pixels = 2*eps/H), smoothed
    by a 25x25 Gaussian of std 3 with reflect padding; bilinear, zero outside.
    """

    name = "elastic"

    def scale(self, x):
        return 2.0 / x.shape[-1]  # pixels -> [-1,1] grid units (advex-uar: 2/resol)

    def init(self, x, gen):
        n, _, h, w = x.shape
        return [(2 * _rand(gen, x, n, 2, h, w) - 1) * self.eps * self.scale(x)]

    def render(self, x, vs):
        pad = (ELASTIC_KERNEL - 1) // 2
        k = gaussian_kernel(ELASTIC_KERNEL, ELASTIC_STD, x.device).expand(2, 1, -1, -1)
        flow = F.conv2d(F.pad(vs[0], (pad,) * 4, mode="reflect"), k, groups=2)
        theta = torch.eye(2, 3, device=x.device).expand(x.shape[0], 2, 3)
        base = F.affine_grid(theta, list(x.shape), align_corners=True)  # linspace(-1,1) grid, as advex-uar
        return F.grid_sample(x, base + flow.permute(0, 2, 3, 1), mode="bilinear", align_corners=True)

    def step(self, vs, gs, it, x):
        e = torch.tensor(self.eps * self.scale(x), device=x.device)
        return [linf_step(vs[0], gs[0], self.step_size * self.scale(x), e)]


# ---------------------------------------------------------------- Fog
FOG_WIBBLE, FOG_DECAY = 100.0, 2.0  # advex-uar fog_creator initial wibble; FogAttack wibble_decay


def fog_map(fog_vars, n, mapsize, wibble=FOG_WIBBLE, decay=FOG_DECAY, diamond_roll=2):
    """Diamond-square plasma fractal driven by fog_vars (3 per level, in [0,1]:
    each new point = mean of its 4 neighbours + wibble*(2v-1)), normalised to
    [0,1] per image. advex-uar rolls the diamond step by 2 (`diamond_roll`);
    Hendrycks' original plasma_fractal rolls by 1."""
    m = fog_vars[0].new_zeros(n, mapsize, mapsize)
    step, k = mapsize, 0
    while step >= 2:
        half = step // 2
        mean = lambda s, v: s / 4.0 + v * 2 * wibble - wibble
        corners = m[:, 0::step, 0::step]
        sq = corners + corners.roll(-1, 1)
        sq = sq + sq.roll(-1, 2)
        m = m.clone()
        m[:, half::step, half::step] = mean(sq, fog_vars[k])
        dr, ul = m[:, half::step, half::step], m[:, 0::step, 0::step]
        left = dr + dr.roll(diamond_roll, 1) + ul + ul.roll(-1, 2)
        top = dr + dr.roll(diamond_roll, 2) + ul + ul.roll(-1, 1)
        m = m.clone()
        m[:, 0::step, half::step] = mean(left, fog_vars[k + 1])
        m[:, half::step, 0::step] = mean(top, fog_vars[k + 2])
        k, step, wibble = k + 3, half, wibble / decay
    flat = m.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return ((m - _bview(lo, m)) / _bview(hi - lo + 1e-12, m)).unsqueeze(1)


def fog_n_vars(mapsize):
    """Shapes of fog_map's variables: 3 per level, level i of size 2^i x 2^i."""
    return [(2 ** i, 2 ** i) for i in range(int(math.log2(mapsize))) for _ in range(3)]


class Fog(UnforeseenAttack):
    """(x + e*fog) / (max_c(x) + e), e = eps/255, fog a plasma fractal of
    variables in [0,1] (3 per level, level i of size 2^i x 2^i)."""

    name = "fog"
    fixed_step = FIXED_STEP

    def mapsize(self, x):
        return 2 ** (int(math.log2(x.shape[-1])) + 1)  # advex-uar: next power of two above resol

    def init(self, x, gen):
        return [_rand(gen, x, x.shape[0], *shape) for shape in fog_n_vars(self.mapsize(x))]

    def render(self, x, vs):
        size = self.mapsize(x)
        top, left = (size - x.shape[-2]) // 2, (size - x.shape[-1]) // 2
        fog = fog_map(vs, x.shape[0], size)[..., top:top + x.shape[-2], left:left + x.shape[-1]]
        e = self.eps / PIXEL
        x_max = x.flatten(2).max(2).values[..., None, None]
        return ((x + e * fog) / (x_max + e)).clamp(0, 1)

    def step(self, vs, gs, it, x):
        return [(v + self.step_size * g.sign()).clamp(0, 1) for v, g in zip(vs, gs)]


# ---------------------------------------------------------------- Gabor
GABOR_KSIZE = 23  # advex-uar GaborAttack kernel size
GABOR_DENSITY = 1.0 / 14  # advex-uar: sparse start with density 1/grid, grid = 14
GABOR_MIN_C = 0.001  # advex-uar normalize_var minC


def gabor_kernel(k, sigma, lam, theta, sides):
    """Sum of `sides` Gabor filters rotated by pi/sides (advex-uar get_gabor_with_sides)."""
    t = torch.linspace(-0.5, 0.5, k)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    g = torch.zeros(k, k)
    for i in range(sides):
        th = theta + math.pi * i / sides
        rx = xx * math.cos(th) + yy * math.sin(th)
        ry = -xx * math.sin(th) + yy * math.cos(th)
        g += torch.exp(-0.5 * (rx ** 2 + ry ** 2) / (sigma + 1e-3) ** 2) * torch.cos(2 * math.pi * lam * rx)
    return g


def gabor_noise(sparse, kernels):
    """Convolve each image's sparse map with its own kernel, then advex-uar's
    variance normalisation (its rfft/irfft pair is an identity, so the local
    spectral variance reduces to |z - mean|), min-max scaled to [0,1]."""
    n = sparse.shape[0]
    z = F.conv2d(sparse.view(1, n, *sparse.shape[-2:]), kernels, groups=n, padding=GABOR_KSIZE // 2).view_as(sparse)
    mean = z.flatten(1).mean(1)
    dev = (z - _bview(mean, z)).abs()
    c = dev / _bview(dev.flatten(1).max(1).values + 1e-12, dev)
    gain = ((GABOR_MIN_C + 1) / (GABOR_MIN_C + c)).detach()
    img = _bview(mean.detach(), z) + (z - _bview(mean.detach(), z)) * gain
    flat = img.flatten(1)
    lo, hi = flat.min(1).values.detach(), flat.max(1).values.detach()
    return (img - _bview(lo, img)) / _bview(hi - lo + 1e-12, img)


class Gabor(UnforeseenAttack):
    """clamp(x + (eps/255) * noise): noise = normalised sparse map (values in
    [-1,1] on a fixed random support) convolved with a random Gabor kernel."""

    name = "gabor"
    fixed_step = FIXED_STEP

    def init(self, x, gen):
        n, _, h, w = x.shape
        support = _rand(gen, x, n, 1, h, w) < GABOR_DENSITY
        self._mask = support.float()
        u = lambda: float(torch.rand((), generator=gen, device=x.device))
        ks = []
        for _ in range(n):  # one random kernel per image, parameter ranges from advex-uar
            sides = int(u() * 10) + 1  # 1..10 orientations
            sigma, lam, theta = 0.3 * u() + 0.1, (GABOR_KSIZE / 4 - 3) * u() + 3, math.pi * u()
            ks.append(gabor_kernel(GABOR_KSIZE, sigma, lam, theta, sides))
        self._kernels = torch.stack(ks).unsqueeze(1).to(x.device)
        return [(2 * _rand(gen, x, n, 1, h, w) - 1) * self._mask]

    def render(self, x, vs):
        return (x + self.eps / PIXEL * gabor_noise(vs[0], self._kernels)).clamp(0, 1)

    def step(self, vs, gs, it, x):
        return [(vs[0] + self.step_size * gs[0].sign()).clamp(-1, 1) * self._mask]


# ---------------------------------------------------------------- Snow
SNOW_BUDGET = 0.2  # advex-uar SnowAttack `budget`: mean flake intensity per region
SNOW_KSIZE = 13  # advex-uar make_kernels snow_length_bound
SNOW_DISCOLOR = 0.25  # advex-uar apply_snow discolor
SNOW_REGION = 8  # advex-uar: budget enforced on 8x8 blocks of the flake grid
SNOW_GRIDS = 7  # advex-uar: 7 flake grids, 4 + 3 offsets


def snow_line_kernel(rng, size=SNOW_KSIZE):
    """Anti-aliased streak from the centre to a random lower-right point,
    mirrored through the centre (advex-uar make_kernels / weighted_line)."""
    mid = size // 2
    r1, c1 = rng.integers(mid + 2, size, size=2)
    w = rng.choice([1, 3, 5], p=[0.6, 0.3, 0.1])  # advex-uar line widths
    rr, cc = np.mgrid[0:size, 0:size].astype(float)
    steep = abs(c1 - mid) < abs(r1 - mid)
    a, b, a1, b1 = (cc, rr, c1, r1) if steep else (rr, cc, r1, c1)  # a: minor axis, b: major axis
    slope = (a1 - mid) / (b1 - mid)
    width = w * math.sqrt(1 + abs(slope)) / 2
    line_a = mid + (b - mid) * slope
    val = np.clip(1 + width / 2 - np.abs(a - line_a), 0, 1) * (b >= mid) * (b <= b1)
    k = val.copy()
    k[:mid + 1, :mid + 1] = val[::-1, ::-1][:mid + 1, :mid + 1]
    return k


def snow_kernels(rng, device):
    """7 blurred streak kernels sharing one random horizontal flip."""
    flip = rng.uniform() < 0.5
    ks = []
    for _ in range(SNOW_GRIDS):
        k = torch.tensor(snow_line_kernel(rng), dtype=torch.float32)
        k = k.flip(1) if flip else k
        blur = rng.uniform(0.41, 0.6)  # advex-uar blurriness range
        g = gaussian_kernel(int(math.ceil(5 * blur)), blur)
        ks.append(F.conv2d(k[None, None], g[None, None], padding=1)[0, 0])
    return torch.stack(ks)[None].to(device)  # 1 x 7 x k x k


def snow_layer(intensity, kernels, h, w):
    """Flakes (intensity^4) on 7 sparse offset grids, smeared by the streak kernels."""
    n = intensity.shape[0]
    grids = intensity.new_zeros(n, SNOW_GRIDS, h, w)
    p = intensity ** 4
    for i in range(4):
        grids[:, i, ::4, i::4] = p[:, i]
    for i in range(3):
        grids[:, 4 + i, i + 1::4, ::4] = p[:, 4 + i]
    return F.conv2d(grids, kernels, padding=kernels.shape[-1] // 2)


def project_snow(intensity):
    """Intensities in (0,1], mean over each 8x8 region and grid <= SNOW_BUDGET."""
    v = intensity.clamp(1e-9, 1)
    h, w = v.shape[-2:]
    r = max(min(SNOW_REGION, h, w), 1)
    mean = F.avg_pool2d(v, r, ceil_mode=True).clamp_min(SNOW_BUDGET)
    scale = (SNOW_BUDGET / mean).repeat_interleave(r, -2).repeat_interleave(r, -1)[..., :h, :w]
    return v * scale


class Snow(UnforeseenAttack):
    """Discoloured x plus eps * snow layer, clamped; flake intensities in (0,1]
    with mean <= 0.2 per 8x8 region of the (H/4 x W/4) flake grid."""

    name = "snow"
    fixed_step = FIXED_STEP

    def init(self, x, gen):
        n, _, h, w = x.shape
        rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (), generator=gen, device=x.device)))
        self._kernels = snow_kernels(rng, x.device)
        return [project_snow(torch.exp(-_rand(gen, x, n, SNOW_GRIDS, h // 4, w // 4) / SNOW_BUDGET))]

    def render(self, x, vs):
        gray = 0.2126 * x[:, 0:1] + 0.7152 * x[:, 1:2] + 0.0722 * x[:, 2:3]  # Rec. 709 luma
        base = (1 - SNOW_DISCOLOR) * x + SNOW_DISCOLOR * torch.max(x, gray * 1.5 + 0.5)  # advex-uar constants
        return (base + self.eps * snow_layer(vs[0], self._kernels, *x.shape[-2:])).clamp(0, 1)

    def step(self, vs, gs, it, x):
        return [project_snow(vs[0] + self.step_size * gs[0].sign())]


ATTACKS = {cls.name: cls for cls in (PGDLinf, PGDL2, FWL1, JPEGLinf, JPEGL2, JPEGL1, Elastic, Fog, Gabor, Snow)}


def run_attack(name, model, x, y, eps, n_iter=N_ITER, step_size=None, seed=0):
    """Attack `name` from ATTACKS at `eps` (advex-uar units); returns x_adv in [0,1]."""
    if name not in ATTACKS:
        raise KeyError(f"unknown attack {name!r}; available: {sorted(ATTACKS)}")
    return ATTACKS[name](eps, n_iter, step_size)(model, x, y, seed)
