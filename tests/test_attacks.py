"""PGD: stays in the threat model, raises the loss it is given, respects BN mode."""
import pytest
import torch
import torch.nn.functional as F

from advss.attacks import Threat, bn_mode, parse_number, pgd
from advss.data import make_procedural, to_float
from advss.models import classifier
from conftest import TINY_MODEL


@pytest.fixture(scope="module")
def model_and_batch():
    """A tiny ResNet trained briefly on procedural images, so the clean loss is low."""
    torch.manual_seed(0)
    xs, ys = make_procedural(30, seed=0)
    xs = to_float(xs)
    model = classifier(TINY_MODEL, 10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        idx = torch.randint(0, len(xs), (64,), generator=gen)
        loss = F.cross_entropy(model(xs[idx]), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, y = xs[:32], ys[:32]
    assert (model(x).argmax(1) == y).float().mean() > 0.5
    return model, x, y


@pytest.mark.parametrize("norm,eps,step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_pgd_stays_in_ball_and_raises_loss(model_and_batch, norm, eps, step):
    model, x, y = model_and_batch
    threat = Threat(norm=norm, eps=eps, step=step, steps=10, random_start=True)
    loss = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    x_adv = pgd(loss, x, threat, torch.Generator().manual_seed(0))
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert loss(x_adv).mean() > loss(x).mean() + 0.1
    assert (model(x_adv).argmax(1) != y).float().mean() > 0.3  # it really attacks


def test_pgd_attacks_any_loss(model_and_batch):
    """The attack maximises whatever it is given, e.g. a logit of class 0."""
    model, x, _ = model_and_batch
    loss = lambda z: model(z)[:, 0]  # noqa: E731
    x_adv = pgd(loss, x, Threat(steps=5), torch.Generator().manual_seed(1))
    assert (loss(x_adv) > loss(x)).all()


def test_pgd_deterministic_for_a_seed(model_and_batch):
    model, x, y = model_and_batch
    loss = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    a = pgd(loss, x, Threat(steps=3), torch.Generator().manual_seed(5))
    b = pgd(loss, x, Threat(steps=3), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_bn_mode_train_keeps_running_stats_and_restores_mode():
    model = classifier(TINY_MODEL, 10).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with bn_mode(model, "train"):
        model(torch.rand(8, 3, 32, 32))
        assert model.training
    with bn_mode(model, "eval"):
        assert not model.training
    assert model.training
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, before[k]), k


def test_parse_number():
    assert parse_number("8/255") == pytest.approx(8 / 255)
    assert parse_number(0.5) == 0.5
    with pytest.raises(ValueError):
        parse_number("eight")
