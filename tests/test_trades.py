"""TRADES (advss.objectives.trades) by its defining properties: the loss is CE(clean) plus β
times a non-negative KL, so it grows linearly with β; the attack's clean target is computed in
the crafting BN mode (eval, as ACL's trades.py and RobustSSL_Benchmark) without moving BN's
running statistics; on a dual-BN model (RSB's AFF) clean inputs pass the clean BN copy and
adversarial inputs the adversarial copy."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.attacks import Threat
from advss.objectives import trades
from advss.dualbn import DualBatchNorm

THREAT = Threat(eps=8 / 255, step=2 / 255, steps=3, bn_mode="eval")


def _net(dual=False):
    """BN straight on the image (so a BN copy's input is the image it was given), then a linear readout."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    return nn.Sequential(DualBatchNorm(bn) if dual else bn, nn.Flatten(), nn.Linear(3 * 8 * 8, 4))


def _batch(n=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loss(model, beta, threat=THREAT, **cfg):
    x, y = _batch()
    loss, logits = trades(model.train(), None, x, y, torch.Generator().manual_seed(2), {"trades_beta": beta, **cfg},
                          threat)
    return loss.item(), F.cross_entropy(logits, y).item()


def test_loss_is_clean_ce_plus_beta_times_a_positive_kl():
    """L(β) = CE + β·KL at the same attack: L(0) is the clean CE, and L(6) − L(0) = 6·(L(1) − L(0)) > 0."""
    l0, ce = _loss(_net(), 0.0)
    l1, _ = _loss(_net(), 1.0)
    l6, _ = _loss(_net(), 6.0)
    assert l0 == pytest.approx(ce, rel=1e-6)
    assert l1 - l0 > 1e-6  # the attack found a point where the prediction moved
    assert l6 - l0 == pytest.approx(6 * (l1 - l0), rel=1e-4)
    with pytest.raises(ValueError):
        _loss(_net(), -1.0)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_clean_target_in_the_crafting_bn_mode_leaves_running_statistics(mode):
    """The first forward (the attack's clean target) runs in the crafting mode and moves no running
    statistics: only the two train-mode forwards of the weights' loss update them."""
    model = _net()
    bn = model[0]
    seen = []
    bn.register_forward_pre_hook(lambda m, inp: seen.append((m.training, m.momentum)))
    before = bn.running_mean.clone()
    _loss(model, 6.0, Threat(eps=8 / 255, step=2 / 255, steps=3, bn_mode=mode))
    first = seen[0]
    assert first == ((False, 0.1) if mode == "eval" else (True, 0.0))  # eval, or batch statistics with momentum 0
    assert all(s == first for s in seen[:4])  # the target and the 3 attack steps
    assert seen[4:] == [(True, 0.1), (True, 0.1)]  # CE(clean) and the adversarial logits, in train mode
    assert int(bn.num_batches_tracked) == (2 if mode == "eval" else 6)
    # the running mean moved by the two train-mode forwards alone (momentum 0.1 twice: 0.81 of the old
    # mean, 0.19 of batches whose mean is x's within ε), not by a third (0.729 and 0.271)
    x, _ = _batch()
    assert bn.running_mean[0] == pytest.approx(float(0.81 * before[0] + 0.19 * x[:, 0].mean()), abs=0.005)


def test_dual_bn_routes_clean_and_adversarial_inputs_through_their_own_copy():
    """RSB's trades_loss_dual: the clean target and CE(clean) through the clean BN; every attack step and
    the adversarial logits through the adversarial BN (its inputs are the attack's iterates, not x)."""
    model = _net(dual=True)
    dual = model[0]
    dual.route_adv = True  # as a dual-BN fine-tuning leaves it between steps (advss.dualbn.dual_bn_finetune)
    got = {"clean": [], "adv": []}
    for name in got:
        getattr(dual, name).register_forward_pre_hook(lambda m, inp, name=name: got[name].append(inp[0].detach()))
    x, _ = _batch()
    _loss(model, 6.0, start_std=0.0)  # RSB's start: x itself
    assert len(got["clean"]) == 2 and all(torch.equal(v, x) for v in got["clean"])
    assert len(got["adv"]) == THREAT.steps + 1
    final = got["adv"][-1]
    assert not torch.equal(final, x) and (final - x).abs().max() <= THREAT.eps + 1e-6
    assert dual.route_adv is True  # the routing is restored
    # a plain model ignores the routes: the same loss as before routing existed (one BN for both)
    assert _loss(_net(), 6.0)[0] == pytest.approx(_loss(_net(), 6.0)[0])
