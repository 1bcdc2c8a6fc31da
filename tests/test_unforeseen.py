"""Unforeseen-attack suite (advss.attacks.unforeseen): threat models and effect."""
import pytest
import torch
import torch.nn.functional as F

from advss.attacks.unforeseen import (ATTACKS, CIFAR10_CALIBRATION, IMAGENET100_CALIBRATION, JPEG_BOX,
                                      SNOW_BUDGET, jpeg_roundtrip, run_attack)
from test_autoattack import accuracy, synthetic_data, tiny_model  # shared tiny model (tests/ is on sys.path)

EPS = {**{k: v[-1] for k, v in CIFAR10_CALIBRATION.items()}, **{k: v[-1] for k, v in IMAGENET100_CALIBRATION.items()}}
N_ITER = 8  # enough to see the loss rise; calibrations use 200
TOL = 1e-5


def check_threat_model(name, attack, x, x_adv, vs):
    eps = attack.eps
    v = vs[0]
    d = (x_adv - x).flatten(1)
    if name == "pgd_linf":
        assert d.abs().max() <= eps / 255 + TOL
    elif name == "pgd_l2":
        assert d.norm(dim=1).max() <= eps / 255 + TOL
    elif name == "fw_l1":
        assert d.abs().sum(1).max() <= eps * x[0].numel() / 255 * (1 + TOL)
    elif name.startswith("jpeg"):
        p = {"jpeg_linf": float("inf"), "jpeg_l2": 2, "jpeg_l1": 1}[name]
        assert v.flatten(1).norm(p=p, dim=1).max() <= eps * (1 + TOL)
        if name != "jpeg_linf":
            assert v.abs().max() <= JPEG_BOX + TOL
        assert torch.allclose(jpeg_roundtrip(x, v / 2), x_adv, atol=1e-5)
    elif name == "elastic":
        assert v.abs().max() <= eps * 2 / x.shape[-1] + TOL  # pixels -> grid units
    elif name == "fog":
        assert all(u.min() >= 0 and u.max() <= 1 for u in vs)
    elif name == "gabor":
        assert v.abs().max() <= 1 and torch.all(v[attack._mask == 0] == 0)  # sparse support kept
    elif name == "snow":
        assert v.min() > 0 and v.max() <= 1
        assert F.avg_pool2d(v, min(8, v.shape[-1])).max() <= SNOW_BUDGET + TOL
    else:
        raise AssertionError(f"no threat-model check for {name}")
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_respects_threat_model_and_lowers_accuracy(name):
    model = tiny_model()
    x, y = synthetic_data(32, seed=11)
    attack = ATTACKS[name](EPS[name], N_ITER)
    x_adv, vs = attack.perturb(model, x, y, seed=0)
    check_threat_model(name, attack, x, x_adv, vs)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)


# Snow is exempt: advex-uar's budget renormalisation after each step flattens the flakes
# (their contribution is intensity^4) and can outweigh the ascent; see test_snow_ascent_direction.
@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"snow"}))
def test_optimisation_beats_random_start(name):
    """The ascent steps raise the loss over the attack's own random start."""
    model = tiny_model()
    x, y = synthetic_data(16, seed=12)
    eps = CIFAR10_CALIBRATION.get(name, IMAGENET100_CALIBRATION.get(name))[2]  # a mid-range eps
    step = 0.05 if name in IMAGENET100_CALIBRATION else None  # fixed ImageNet step is tiny for 8 steps
    loss = lambda n: F.cross_entropy(model(run_attack(name, model, x, y, eps, n, step, seed=1)), y).item()
    assert loss(N_ITER) > loss(0)


def test_snow_ascent_direction():
    """Before projection, one signed step on the flake intensities raises the loss."""
    model = tiny_model()
    x, y = synthetic_data(16, seed=12)
    attack = ATTACKS["snow"](0.25, 0)
    v = attack.init(x, torch.Generator().manual_seed(1))[0].requires_grad_(True)
    loss = lambda u: F.cross_entropy(model(attack.render(x, [u])), y)
    grad, = torch.autograd.grad(loss(v), v)
    assert loss((v + 0.01 * grad.sign()).clamp(1e-9, 1)).item() > loss(v).item()


def test_deterministic_and_restores_mode():
    model = tiny_model()
    x, y = synthetic_data(4, seed=13)
    model.train()
    try:
        a = run_attack("snow", model, x, y, 1.0, 2, seed=5)
        assert model.training
        assert torch.equal(a, run_attack("snow", model, x, y, 1.0, 2, seed=5))
    finally:
        model.eval()
    with pytest.raises(KeyError):
        run_attack("nope", model, x, y, 1.0, 1)


def test_jpeg_roundtrip_is_identity_on_gray_images():
    """No offset, no chroma: JPEG without rounding must give the image back (DCT/table layout check)."""
    g = torch.rand(2, 1, 32, 32).expand(2, 3, 32, 32)
    assert torch.allclose(jpeg_roundtrip(g, torch.zeros(2, 1536)), g, atol=1e-4)


def test_every_attack_has_a_calibration_with_its_source():
    """Fog, Gabor and Snow have only 224-px ImageNet-100 ε: flagged, not passed off as CIFAR-10's."""
    from advss.attacks.unforeseen import ADVEX_UAR_COMMIT, CALIBRATIONS, UNCALIBRATED, label

    assert set(CALIBRATIONS) == set(ATTACKS) and len(ATTACKS) == 10  # advex-uar's ten attacks
    assert UNCALIBRATED == {"fog", "gabor", "snow"}
    for name, cal in CALIBRATIONS.items():
        assert len(cal["eps"]) == 6 and ADVEX_UAR_COMMIT in cal["source"]
        assert ("imagenet-100" in cal["source"]) == (name in UNCALIBRATED)
        assert label(name).endswith("†") == (name in UNCALIBRATED)
