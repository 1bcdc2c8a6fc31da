"""DynACL's momentum encoder (issue 25, item 1), as PKU-ML/DYNACL at 7d143db does it
(train_DynACL.py, models/resnet_multi_bn.py: resnet18_momentum): an EMA copy of trunk and
projection head (m = 0.99) with no gradient; view 0 of each image through the online
encoder and view 1 through the momentum one, in the attack and in the loss (swap=True);
the EMA after the step's forward passes, before the optimiser's update; the momentum
encoder exported (model_encoder_k.pt) and so fine-tuned."""
import torch

from advss.attacks import Threat
from advss.models import load_checkpoint
from advss.objectives import OBJECTIVES
from advss.pretext import build
from advss.step import init_momentum, train_step
from advss.train import train
from conftest import TINY_MODEL, train_spec

M = 0.99


def dynacl(**cfg):
    torch.manual_seed(0)
    spec = {"task": "contrastive", "model": TINY_MODEL,
            "pretext": {"contrastive": {"dual_bn": True, "schedule": "dynacl", "momentum": M, **cfg}}}
    return build(spec, 10)


def batch(task, n=8):
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return task.make_batch(x, None, torch.Generator().manual_seed(1))


def online(model):
    return [p.detach().clone() for p in [*model.trunk.parameters(), *model.head.proj.parameters()]]


def test_the_momentum_encoder_is_an_ema_with_no_gradient():
    model, task = dynacl()
    key = model.head.key_params()
    assert key and not any(p.requires_grad for p in key)
    with torch.no_grad():  # weights set after the build (init_weights): the first step must copy them
        for p in key:
            p.add_(1.0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    assert not {id(p) for p in key} & {id(p) for g in opt.param_groups for p in g["params"]}
    init_momentum(opt)
    objective = task.wrap_objective(OBJECTIVES["acl"])
    threat = Threat(eps=8 / 255, step=2 / 255, steps=2, bn_mode="eval")
    inputs, targets = batch(task)
    model.train()
    q0 = online(model)
    train_step(model, task, objective, {}, threat, opt, False, inputs, targets, torch.Generator(), torch.tensor(0.1))
    q1 = online(model)
    assert any(not torch.equal(a, b) for a, b in zip(q0, q1))  # the online encoder moved
    # DynACL: k = q0 at init, then k ← m·k + (1 − m)·q0 after the first step's forwards: q0
    assert all(torch.allclose(k, q) for k, q in zip(model.head.key_params(), q0))
    assert all(p.grad is None for p in model.head.key_params())
    train_step(model, task, objective, {}, threat, opt, False, inputs, targets, torch.Generator(), torch.tensor(0.1))
    # the second step's EMA uses that step's q (q1: before its update), not the updated one
    assert all(torch.allclose(k, M * a + (1 - M) * b, atol=1e-6)
               for k, a, b in zip(model.head.key_params(), q0, q1))
    # running statistics are the encoder's own (not averaged): the key's BN saw view 1 only
    assert float(model.head.started) == 1


def test_view_0_goes_through_the_online_encoder_and_view_1_through_the_momentum_one():
    model, task = dynacl()
    seen = {"online": [], "key": []}
    model.trunk.register_forward_hook(lambda m, a, out: seen["online"].append(a[0].detach()))
    model.head.key_trunk.register_forward_hook(lambda m, a, out: seen["key"].append(a[0].detach()))
    inputs, targets = batch(task)
    task.loss(model, inputs, targets)
    assert torch.allclose(seen["online"][0], model.norm(inputs[:, 0]))
    assert torch.allclose(seen["key"][0], model.norm(inputs[:, 1]))
    # the attack and both losses of ACL's objective route so too: 2 PGD steps + adversarial + clean
    seen["online"].clear(), seen["key"].clear()
    threat = Threat(eps=8 / 255, step=2 / 255, steps=2, bn_mode="eval")
    model.train()
    loss, _ = task.wrap_objective(OBJECTIVES["acl"])(model, task, inputs, targets, torch.Generator(), {}, threat)
    assert len(seen["online"]) == len(seen["key"]) == 4
    # PGD perturbs view 1 through the momentum encoder (its input gradient flows), within ε
    x_adv_key = seen["key"][2]
    assert not torch.allclose(x_adv_key, model.norm(inputs[:, 1]))
    # the loss's gradient reaches the online encoder only
    loss.backward()
    assert all(p.grad is None for p in model.head.key_params())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trunk.parameters())


def test_the_momentum_encoder_is_exported_and_fine_tuned(tiny_data, tmp_path):
    spec = train_spec(stage="pretrain", task="contrastive", objective={"kind": "acl"}, augment=False,
                      select_by="last", eval_ra=True, epochs=2, batch_size=32,
                      pretext={"contrastive": {"dual_bn": True, "schedule": "dynacl", "reload_every": 1,
                                               "momentum": M}})
    train(spec, tiny_data, tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "m.json", device="cpu",
          log=lambda m: None)
    ck = load_checkpoint(tmp_path / "m.pt")
    assert not any("key_" in k or ".proj." in k for k in ck["state_dict"])
    model, task = dynacl()
    exported = task.export(model).state_dict()
    key = model.head.key_trunk.state_dict()
    # the momentum copy's adversarial BN (finetune_bn 'adv') under the plain trunk keys
    w = "layer1.0.bn1.weight"
    assert torch.equal(exported[f"trunk.{w}"], key[w.replace("bn1.", "bn1.adv.")])
    with torch.no_grad():
        model.head.key_trunk.stem[0].weight.add_(1.0)
    assert torch.equal(task.export(model).state_dict()["trunk.stem.0.weight"], model.head.key_trunk.stem[0].weight)
    ft = train_spec(epochs=1)
    train(ft, tiny_data, tmp_path / "f.pt", tmp_path / "f.csv", tmp_path / "f.json", init=tmp_path / "m.pt",
          device="cpu", log=lambda m: None)


def test_budget_rule_counts_the_momentum_views_loss_forwards_as_gradient_free():
    from advss import protocol as P

    spec = {"task": "contrastive", "objective": {"kind": "acl"}, "threat": {"train_steps": 5}}
    assert P.passes_per_image(spec) == 14  # ACL: (5 + 2) per view, two views
    # DynACL: view 0 5 + 2, view 1 only its attack's 5 (through the momentum encoder)
    assert P.passes_per_image({**spec, **P.contrastive_spec("dynacl")}) == 12
