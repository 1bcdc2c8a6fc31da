"""The contrastive family (SimCLR, ACL, DynACL): NT-Xent, per-image augmentation, the
adversarial views, dual BN, DynACL's schedule, and a short run through the loop."""
import csv
import math

import pytest
import torch
import torch.nn as nn

from advss.attacks import Threat
from advss.models import load_checkpoint
from advss.objectives import OBJECTIVES
from advss.pretext import build, build_task
from advss.dualbn import DualBatchNorm
from advss.pretext.contrastive import apply_params, draw_params, dynacl_adv_weight, dynacl_strength, nt_xent
from advss.train import train
from conftest import TINY_MODEL, train_spec


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


def _model(**cfg):
    spec = {"task": "contrastive", "pretext": {"contrastive": cfg}, "model": TINY_MODEL}
    torch.manual_seed(0)
    return build(spec, 10)


def test_nt_xent_equals_the_direct_formula():
    """ℓ(i) = −log exp(s(i,p)/τ) / Σ_{k≠i} exp(s(i,k)/τ), averaged over all 2N anchors."""
    z = torch.randn(3, 2, 5, generator=torch.Generator().manual_seed(1))
    t = 0.5
    per_image, sim = nt_xent(z, t)
    e = [v / v.norm() for v in z.flatten(0, 1)]
    direct = []
    for i in range(6):
        p = i ^ 1
        num = math.exp(float(e[i] @ e[p]) / t)
        den = sum(math.exp(float(e[i] @ e[k]) / t) for k in range(6) if k != i)
        direct.append(-math.log(num / den))
    assert per_image.shape == (3,)
    assert per_image.mean().item() == pytest.approx(sum(direct) / 6, rel=1e-5)
    assert per_image.tolist() == pytest.approx([(direct[2 * i] + direct[2 * i + 1]) / 2 for i in range(3)], rel=1e-5)
    assert torch.isinf(sim.diagonal()).all()


def test_augmentation_parameters_are_drawn_per_image_and_per_view():
    n = 64
    p = draw_params(n, torch.Generator().manual_seed(0), "cpu")
    for k, v in p.items():
        assert v.shape == ((n, 4) if k == "order" else (n,)), k
    for k in ("w", "h", "cx", "brightness", "hue"):
        assert len(set(p[k].tolist())) > n // 2, k  # not one value for the batch
    for k, rate in (("flip", 0.5), ("jitter", 0.8), ("gray", 0.2)):
        assert 0 < p[k].float().mean() < 1, k
    assert (p["w"] * p["h"]).min() >= 0.1 - 1e-6  # crop area ≥ 1 − 0.9s
    # one image repeated: every copy gets its own view, and the two views differ
    x = _images(1).expand(n, -1, -1, -1).contiguous()
    task = build_task("contrastive", {})
    views, targets = task.make_batch(x, None, torch.Generator().manual_seed(0))
    assert views.shape == (n, 2, 3, 32, 32) and torch.equal(targets, torch.arange(n))
    assert not torch.allclose(views[0, 0], views[1, 0]) and not torch.allclose(views[0, 0], views[0, 1])
    assert views.min() >= 0 and views.max() <= 1


def test_jitter_order_is_drawn_per_image_and_applied_in_that_order():
    """torchvision's ColorJitter shuffles its four ops on every call: each image gets its own
    permutation (all 24 appear), and the view is the ops composed in that image's order."""
    from advss.pretext.contrastive import JITTER_OPS, _jitter_op

    n = 512
    p = draw_params(n, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(p["order"].sort(1).values, torch.arange(4).expand(n, 4))  # permutations
    assert len({tuple(r) for r in p["order"].tolist()}) == 24
    x = _images(8)
    p = {k: v[:8] for k, v in p.items()}
    p.update(w=torch.ones(8), h=torch.ones(8), cx=torch.zeros(8), cy=torch.zeros(8),
             flip=torch.zeros(8, dtype=torch.bool), jitter=torch.ones(8, dtype=torch.bool),
             gray=torch.zeros(8, dtype=torch.bool))
    out = apply_params(x, p)
    for i in range(8):
        j = x[i:i + 1]
        for k in p["order"][i].tolist():
            name = JITTER_OPS[k]
            j = _jitter_op(j, name, p[name][i:i + 1] if name == "hue" else p[name][i].view(1, 1, 1, 1))
        torch.testing.assert_close(out[i:i + 1], j, atol=1e-4, rtol=0)
    fixed = {**p, "order": torch.arange(4).expand(8, 4)}
    assert not torch.allclose(apply_params(x, fixed), out, atol=1e-3)  # the order matters


def test_bicubic_crop_resamples_within_range():
    """ACL resizes its crops bicubic (interpolation=3): a zoomed crop differs from the bilinear one
    and, clipped as PIL's 8-bit result, stays in [0,1]; the whole image is kept either way."""
    x = _images(4)
    p = draw_params(4, torch.Generator().manual_seed(0), "cpu", strength=0.0)
    p.update(w=torch.full((4,), 0.5), h=torch.full((4,), 0.5), flip=torch.zeros(4, dtype=torch.bool))
    cubic, linear = apply_params(x, p, "bicubic"), apply_params(x, p, "bilinear")
    assert not torch.allclose(cubic, linear, atol=1e-3) and cubic.min() >= 0 and cubic.max() <= 1
    whole = {**p, "w": torch.ones(4), "h": torch.ones(4), "cx": torch.zeros(4), "cy": torch.zeros(4)}
    torch.testing.assert_close(apply_params(x, whole, "bicubic"), x, atol=1e-5, rtol=0)
    with pytest.raises(ValueError):
        apply_params(x, p, "nearest")


def test_zero_strength_is_the_identity_and_flip_mirrors():
    """DynACL's strength 0 leaves crop, colour and gray alone (flip stays: DynACL does not decay it)."""
    x = _images(16)
    p = draw_params(16, torch.Generator().manual_seed(0), "cpu", strength=0.0)
    assert not p["jitter"].any() and not p["gray"].any()
    out = apply_params(x, p)
    want = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    torch.testing.assert_close(out, want, atol=1e-5, rtol=0)


def test_adversarial_views_raise_the_contrastive_loss_within_the_ball():
    model, task = _model()
    model.eval()
    inputs, targets = task.make_batch(_images(8), None, torch.Generator().manual_seed(0))
    threat = Threat(eps=8 / 255, step=2 / 255, steps=5, bn_mode="eval")
    from advss.attacks import pgd

    x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean, adv = task.loss(model, inputs, targets)[0].mean(), task.loss(model, x_adv, targets)[0].mean()
    assert adv > clean + 0.01
    assert (x_adv - inputs).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert ((x_adv - inputs)[:, 1].abs().amax((1, 2, 3)) > 0).all()  # both views are perturbed


def test_dual_bn_keeps_separate_running_statistics():
    model, task = _model(dual_bn=True)
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    assert duals and all(isinstance(p, DualBatchNorm) for p in model.modules() for c in p.children()
                         if isinstance(c, nn.modules.batchnorm._BatchNorm))  # trunk and head alike
    stem = model.trunk.stem[1]
    model.train()
    inputs, targets = task.make_batch(_images(8), None, torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in stem.state_dict().items()}
    task.loss(model, inputs, targets)
    assert not torch.equal(stem.clean.running_mean, before["clean.running_mean"])
    assert torch.equal(stem.adv.running_mean, before["adv.running_mean"])
    mid = {k: v.clone() for k, v in stem.state_dict().items()}
    with task.adversarial(model):
        task.loss(model, inputs + 0.5, targets)
    assert torch.equal(stem.clean.running_mean, mid["clean.running_mean"])
    assert not torch.equal(stem.adv.running_mean, mid["adv.running_mean"])
    assert not any(m.route_adv for m in duals)  # the context restores the clean route
    # the export keeps one copy under plain keys: a plain trunk loads it strictly
    sd = task.export(model).state_dict()
    assert not any(".clean." in k or ".adv." in k for k in sd)
    assert torch.equal(sd["trunk.stem.1.running_mean"], stem.adv.running_mean)
    plain, _ = build({"task": "classification", "model": TINY_MODEL}, 10)
    plain.trunk.load_state_dict({k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")})


def test_dynacl_schedule_matches_train_dynacl():
    """Strength 1 − e₀/E with reloads every K epochs; w = min(1 + ⌊epoch/K⌋·(K/E)·λ, 2) at 1-based epochs."""
    E, K = 1000, 50
    assert dynacl_strength(0, E, K) == 1.0 and dynacl_strength(49, E, K) == 1.0
    assert dynacl_strength(50, E, K) == pytest.approx(0.95) and dynacl_strength(999, E, K) == pytest.approx(0.05)
    assert dynacl_adv_weight(0, E, K) == 1.0 and dynacl_adv_weight(48, E, K) == 1.0
    assert dynacl_adv_weight(49, E, K) == pytest.approx(1 + 0.05 * 2 / 3)  # epoch 50 (1-based)
    assert dynacl_adv_weight(999, E, K) == pytest.approx(1 + 20 * 0.05 * 2 / 3)
    task = build_task("contrastive", {"contrastive": {"schedule": "dynacl", "reload_every": 2}})
    w = task.adv_weight
    task.set_epoch(3, 4, "cpu")
    assert task.strength == pytest.approx(0.5) and task.adv_weight is w and float(w) == pytest.approx(1 + 2 * (2 / 4) * 2 / 3)
    assert build_task("contrastive", {}).adv_weight == 1.0
    with pytest.raises(ValueError, match="schedule"):
        build_task("contrastive", {"contrastive": {"schedule": "linear"}})


def test_acl_objective_weights_clean_and_adversarial_streams():
    model, task = _model(dual_bn=True, schedule="dynacl")
    model.eval()
    inputs, targets = task.make_batch(_images(8), None, torch.Generator().manual_seed(0))
    threat = Threat(eps=8 / 255, step=2 / 255, steps=2, bn_mode="eval")
    loss1, _ = OBJECTIVES["acl"](model, task, inputs, targets, torch.Generator().manual_seed(1), {}, threat)
    task.adv_weight.fill_(2.0)
    loss2, _ = OBJECTIVES["acl"](model, task, inputs, targets, torch.Generator().manual_seed(1), {}, threat)
    clean = task.loss(model, inputs, targets)[0].mean()
    # w = 2 is the adversarial stream alone; w = 1 the mean of both, so clean = 2·loss1 − loss2
    assert float(2 * loss1 - loss2) == pytest.approx(float(clean), rel=1e-4)
    assert loss2 > loss1


@pytest.mark.parametrize("kind", ["standard", "acl"])
def test_contrastive_pretraining_runs_through_the_loop_and_transfers(tiny_data, tmp_path, kind):
    cfg = {"dual_bn": kind == "acl", "schedule": "dynacl" if kind == "acl" else "constant", "reload_every": 1}
    spec = train_spec(stage="pretrain", task="contrastive", pretext={"contrastive": cfg}, objective={"kind": kind},
                      augment=False, select_by="last", eval_ra=kind == "acl", epochs=2)
    d = tmp_path / kind
    train(spec, tiny_data, d / "m.pt", d / "metrics.csv", d / "meta.json", device="cpu", log=lambda m: None)
    rows = list(csv.DictReader(open(d / "metrics.csv")))
    assert len(rows) == 2 and all(math.isfinite(float(r["train_loss"])) for r in rows)
    assert 0 <= float(rows[-1]["val_ta"]) <= 1
    ck = load_checkpoint(d / "m.pt")
    assert not any(".adv." in k or ".clean." in k for k in ck["state_dict"])
    ft = train_spec(epochs=1)
    train(ft, tiny_data, d / "f.pt", d / "f.csv", d / "f.json", init=d / "m.pt", device="cpu", log=lambda m: None)


def test_validation_attacks_a_dual_bn_task_through_its_adversarial_bn(monkeypatch):
    from advss.evaluate import evaluate

    model, task = _model(dual_bn=True)
    routes = []
    forward = DualBatchNorm.forward
    monkeypatch.setattr(DualBatchNorm, "forward", lambda self, x: routes.append(self.route_adv) or forward(self, x))
    threat = Threat(eps=8 / 255, step=2 / 255, steps=1, bn_mode="eval")
    ev = evaluate(model, task, _images(8), torch.zeros(8, dtype=torch.long), threat, 8)
    assert ev["clean"].shape == (8,) and ev["adv"].shape == (8,)
    assert True in routes and False in routes  # clean passes clean, attack and adversarial passes adversarial
    assert routes[:len(routes) // 3].count(True) == 0  # the clean pass comes first


def test_lars_step_equals_acl_lars():
    """The step's LARS against ACL's optimizer/lars.py algorithm written out per parameter."""
    from advss.step import init_momentum, sgd_update

    torch.manual_seed(0)
    ref = [torch.randn(5, 3), torch.randn(7), torch.zeros(4)]  # a zero weight takes the local rate 1
    mine = [p.clone().requires_grad_(True) for p in ref]
    opt = torch.optim.SGD(mine, lr=5.0, momentum=0.9, weight_decay=1e-6)
    opt.param_groups[0]["lars_eta"] = 0.001
    init_momentum(opt)
    bufs = [torch.zeros_like(p) for p in ref]
    for step in range(3):
        lr = 5.0 * (step + 1) / 3
        grads = [torch.randn_like(p) for p in ref]
        for p, g in zip(mine, grads):
            p.grad = g.clone()
        sgd_update(opt, torch.tensor(lr))
        for i, (p, g) in enumerate(zip(ref, grads)):
            wn, gn = p.norm(), g.norm()
            local = 1.0 if wn < 1e-15 or gn < 1e-15 else 0.001 * wn / (gn + 1e-6 * wn)
            bufs[i] = 0.9 * bufs[i] + lr * local * (g + 1e-6 * p)
            ref[i] = p - bufs[i]
        for p, q in zip(ref, mine):
            torch.testing.assert_close(q.detach(), p, rtol=1e-5, atol=1e-7)


def test_budget_rule_counts_both_views():
    from advss import protocol as P

    threat = {"train_steps": 5}
    assert P.passes_per_image({"task": "contrastive", "objective": {"kind": "standard"}, "threat": threat}) == 2
    assert P.passes_per_image({"task": "contrastive", "objective": {"kind": "acl"}, "threat": threat}) == 14


def test_dual_bn_aff_starts_from_both_bn_copies_and_exports_the_adversarial_one(tiny_data, tmp_path):
    """RSB's AFF after ACL/DynACL: the pretraining keeps both BN copies (bn_copies), the fine-tuning
    builds a dual-BN classifier from them (clean copy from the clean BN, adversarial from the
    adversarial), zeroes the head, trains on every training image, and saves the adversarial copy
    as a plain model; a pretraining with one copy is refused."""
    from advss.io import AdvssError
    from advss.train import setup

    pre = train_spec(stage="pretrain", task="contrastive", pretext={"contrastive": {"dual_bn": True}},
                     objective={"kind": "acl"}, augment=False, select_by="last", epochs=1)
    train(pre, tiny_data, tmp_path / "p.pt", tmp_path / "p.csv", tmp_path / "p.json", device="cpu", log=lambda m: None)
    ck = load_checkpoint(tmp_path / "p.pt")
    key = "trunk.stem.1.running_mean"
    assert set(ck["bn_copies"]) == {"clean", "adv"} and torch.equal(ck["state_dict"][key], ck["bn_copies"]["adv"][key])
    assert not torch.equal(ck["bn_copies"]["clean"][key], ck["bn_copies"]["adv"][key])  # two real copies
    aff = train_spec(objective={"kind": "trades", "trades_beta": 6.0, "start_std": 0.0}, dual_bn=True,
                     head_init="zero", train_data="all", select_by="last", epochs=1)
    job = setup(aff, tiny_data, init=tmp_path / "p.pt", device="cpu", log=lambda m: None)
    dual = job.model.trunk.stem[1]
    assert isinstance(dual, DualBatchNorm) and dual.route_adv  # validation and export see the adversarial copy
    assert torch.equal(dual.clean.running_mean, ck["bn_copies"]["clean"][key])
    assert torch.equal(dual.adv.running_mean, ck["bn_copies"]["adv"][key])
    assert not job.model.head.weight.any() and not job.model.head.bias.any()
    assert len(job.fit[0]) == 300  # fit + val: every training image
    train(aff, tiny_data, tmp_path / "f.pt", tmp_path / "f.csv", tmp_path / "f.json", init=tmp_path / "p.pt",
          device="cpu", log=lambda m: None)
    out = load_checkpoint(tmp_path / "f.pt")["state_dict"]
    assert key in out and not any(".adv." in k or ".clean." in k for k in out)
    with pytest.raises(AdvssError, match="select_by"):
        setup({**aff, "select_by": "val_ra"}, tiny_data, init=tmp_path / "p.pt", device="cpu", log=lambda m: None)
    single = {**pre, "pretext": {"contrastive": {}}, "objective": {"kind": "standard"}}
    train(single, tiny_data, tmp_path / "s.pt", tmp_path / "s.csv", tmp_path / "s.json", device="cpu",
          log=lambda m: None)
    with pytest.raises(AdvssError, match="dual-BN pretraining"):
        setup(aff, tiny_data, init=tmp_path / "s.pt", device="cpu", log=lambda m: None)


def test_acl_initialisation_is_kaiming_fan_out():
    """ACL's and DynACL's ResNets: convolutions He-normal over fan_out (std √(2 / (k²·c_out)))."""
    from advss.models import init_weights

    model, _ = _model()
    init_weights(model, "kaiming_fan_out")
    conv = model.trunk.layer4[0].conv1
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
    with pytest.raises(ValueError):
        init_weights(model, "xavier")
