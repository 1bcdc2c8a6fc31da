"""AutoAttack (advss.attacks.autoattack) on a tiny undefended model."""
import functools

import pytest
import torch
import torch.nn.functional as F

from advss.attacks.autoattack import COMPONENTS, LEFT_OUT, autoattack, square_linf, make_generator

N_CLASSES = 10  # APGD-T needs >= 4 classes; 10 as CIFAR-10


def synthetic_data(n, seed):
    """Class k = a fixed smooth random template + pixel noise: easy to learn, not robust."""
    smooth = F.interpolate(torch.rand(N_CLASSES, 3, 4, 4, generator=torch.Generator().manual_seed(0)),
                           size=32, mode="bilinear", align_corners=False)
    templates = 0.5 + 0.5 * (smooth - 0.5)  # half contrast: learnable, yet fooled well within 8/255
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, N_CLASSES, (n,), generator=g)
    x = (templates[y] + 0.1 * torch.randn(n, 3, 32, 32, generator=g)).clamp(0, 1)
    return x, y


@functools.lru_cache(maxsize=1)
def tiny_model():
    """A 2-layer conv net trained for a few hundred steps: ~100% clean accuracy."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, N_CLASSES))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(150):
        x, y = synthetic_data(64, seed=1000 + step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def pgd_linf(model, x, y, eps, steps=20, alpha=None, seed=0):
    """Plain Madry et al. PGD with a random start (reference baseline)."""
    alpha = alpha or 2.5 * eps / steps
    g = torch.Generator().manual_seed(seed)
    x_adv = (x + eps * (2 * torch.rand(x.shape, generator=g) - 1)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
    return x_adv


def test_components_document_what_is_left_out():
    assert set(COMPONENTS) | set(LEFT_OUT) == {"apgd-ce", "apgd-t", "fab-t", "square"}


def test_autoattack_breaks_undefended_model():
    model = tiny_model()
    x, y = synthetic_data(32, seed=1)
    eps = 8 / 255
    assert accuracy(model, x, y) >= 0.9
    out = autoattack(model, x, y, eps=eps, n_iter=20, components=("apgd-ce", "apgd-t"), n_target_classes=3)
    assert out["per_component"]["clean"] >= 0.9
    assert out["robust"].float().mean().item() <= 0.05
    assert accuracy(model, out["x_adv"], y) <= 0.05  # robust flags agree with the returned images
    assert (out["x_adv"] - x).abs().max().item() <= eps + 1e-6
    assert out["x_adv"].min() >= 0 and out["x_adv"].max() <= 1


def test_autoattack_at_least_as_strong_as_pgd20():
    model = tiny_model()
    x, y = synthetic_data(48, seed=2)
    eps = 1.5 / 255  # small enough that PGD leaves some points robust
    pgd_acc = accuracy(model, pgd_linf(model, x, y, eps), y)
    out = autoattack(model, x, y, eps=eps, n_iter=20, components=("apgd-ce", "apgd-t"), n_target_classes=3)
    assert 0 < pgd_acc < 1, "eps should make the comparison informative"
    assert out["robust"].float().mean().item() <= pgd_acc
    stages = list(out["per_component"].values())
    assert stages == sorted(stages, reverse=True)  # each stage only removes robust points


def test_square_black_box_lowers_accuracy():
    model = tiny_model()
    x, y = synthetic_data(16, seed=3)
    eps = 8 / 255
    x_adv, fooled = square_linf(model, x, y, eps, n_queries=100, gen=make_generator(0, x.device))
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(model, x_adv, y) < accuracy(model, x, y)
    assert torch.equal(fooled, model(x_adv).argmax(1) != y)


def test_deterministic_for_seed_and_restores_mode():
    model = tiny_model()
    x, y = synthetic_data(8, seed=4)
    model.train()
    try:
        kwargs = dict(eps=2 / 255, n_iter=5, n_target_classes=2, n_queries=20)
        a, b = autoattack(model, x, y, seed=3, **kwargs), autoattack(model, x, y, seed=3, **kwargs)
        assert model.training
        assert torch.equal(a["x_adv"], b["x_adv"]) and torch.equal(a["robust"], b["robust"])
    finally:
        model.eval()


def test_subset_and_bad_components():
    model = tiny_model()
    x, y = synthetic_data(20, seed=5)
    out = autoattack(model, x, y, n_iter=2, components=("apgd-ce",), n_examples=6, seed=1)
    assert out["x_adv"].shape == (6, 3, 32, 32) and out["robust"].shape == (6,)
    with pytest.raises(ValueError, match="fab-t"):
        autoattack(model, x, y, components=("fab-t",))


# ------------------------------------------------------------------ the authors' code (pyautoattack)
def test_pyautoattack_runs_all_four_standard_attacks_and_beats_pgd20():
    """The primary number: fra31's code, FAB-T included, stages in the standard order,
    robust flags that agree with the stages, and never weaker than PGD-20 here."""
    from advss.attacks.autoattack import STANDARD_ATTACKS, pyautoattack_eval

    model = tiny_model()
    x, y = synthetic_data(48, seed=2)
    eps = 1.5 / 255  # PGD-20 leaves points robust: the comparison is informative
    out = pyautoattack_eval(model, x, y, eps, version="custom", n_iter=10, n_target_classes=3, n_queries=30,
                            fab_n_iter=3)
    assert out["attacks"] == list(STANDARD_ATTACKS) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert list(out["per_component"]) == ["clean", *STANDARD_ATTACKS]
    assert out["package"].startswith("pyautoattack ")
    stages = list(out["per_component"].values())
    assert stages == sorted(stages, reverse=True) and stages[0] == pytest.approx(accuracy(model, x, y))
    assert out["robust"].float().mean().item() == pytest.approx(stages[-1])
    pgd_acc = accuracy(model, pgd_linf(model, x, y, eps), y)
    assert 0 < pgd_acc < 1 and out["robust"].float().mean().item() <= pgd_acc


def test_pyautoattack_standard_keeps_its_budget():
    from advss.attacks.autoattack import STANDARD_BUDGET, pyautoattack_eval

    assert STANDARD_BUDGET == {"n_iter": 100, "n_target_classes": 9, "n_queries": 5000, "fab_n_iter": 100}
    x, y = synthetic_data(2, seed=0)
    with pytest.raises(ValueError, match="custom"):
        pyautoattack_eval(tiny_model(), x, y, 8 / 255, version="standard", n_iter=10)
    with pytest.raises(ValueError, match="version"):
        pyautoattack_eval(tiny_model(), x, y, 8 / 255, version="plus")


def test_installed_pyautoattack_is_the_authors_code():
    """The package's standard version is fra31/auto-attack's (read from its source):
    APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries, p_init 0.8)."""
    from pyautoattack import AutoAttack

    aa = AutoAttack(tiny_model(), norm="Linf", eps=8 / 255, version="standard", device="cpu")
    assert aa.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (aa.apgd.n_restarts, aa.apgd.n_iter, aa.apgd.thr_decr) == (1, 100, 0.75)
    assert (aa.apgd_targeted.n_target_classes, aa.apgd_targeted.n_iter) == (9, 100)
    assert (aa.fab.n_target_classes, aa.fab.n_restarts, aa.fab.n_iter) == (9, 1, 100)
    assert (aa.square.n_queries, aa.square.p_init, aa.square.rescale_schedule) == (5000, 0.8, False)


def test_pyautoattack_caps_the_target_classes_below_ten_classes():
    """pyautoattack's APGD-T and FAB-T index the 2nd..10th highest logits unguarded: a 5-class
    model (like R-ImageNet's 9-class map) raised IndexError. The cap, set after either version
    is built, targets 4 classes here (the standard version's 5,000 Square queries would take 12 s)."""
    from advss.attacks.autoattack import pyautoattack_eval

    templates = F.interpolate(torch.rand(5, 3, 2, 2, generator=torch.Generator().manual_seed(0)), size=8,
                              mode="bilinear", align_corners=False).flatten(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 5))  # nearest template
    with torch.no_grad():
        model[1].weight.copy_(templates)
        model[1].bias.copy_(-0.5 * (templates ** 2).sum(1))
    y = torch.arange(10) % 5
    x = (templates[y] + 0.02 * torch.randn(10, 192, generator=torch.Generator().manual_seed(1))).view(10, 3, 8, 8)
    assert accuracy(model, x, y) == 1.0  # every point reaches APGD-T
    out = pyautoattack_eval(model, x, y, 1 / 255, version="custom", n_iter=2, n_target_classes=9, n_queries=2,
                            fab_n_iter=2)
    assert out["n_target_classes_used"] == 4 and out["budget"]["n_target_classes"] == 9
    assert list(out["per_component"]) == ["clean", "apgd-ce", "apgd-t", "fab-t", "square"]
    with pytest.raises(ValueError, match="at least 4 classes"):
        pyautoattack_eval(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), x, y % 3, 1 / 255,
                          version="custom", n_iter=2, n_queries=2, fab_n_iter=2)
