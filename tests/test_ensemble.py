"""Ensemble adversarial pretraining (eq. 2–4): the log-det diversity term, its gradient
to the weights, the α = 0 path, the sign key, the three-member task, and a pretrain →
fine-tune run through the one training loop."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY_MODEL, train_spec

from advss.attacks import Threat
from advss.ensemble import RIDGE, log_det_diversity, member_losses_and_diversity
from advss.io import generator
from advss.objectives import OBJECTIVES
from advss.pretext import build_task
from advss.pretext.jigsaw import Jigsaw
from advss.pretext.rotation import rotate
from advss.train import build

SELFIE_SMALL = {"layers": 1, "heads": 2, "d_ff": 32}  # a one-layer transformer: fast on a CPU
PRETEXT = {"ensemble": {"pretext": {"selfie": SELFIE_SMALL}}}


def ensemble_model(seed=0):
    torch.manual_seed(seed)
    return build({"task": "ensemble", "model": TINY_MODEL, "pretext": PRETEXT}, 10)


def batch(task, n=16, seed=0):
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return x, *task.make_batch(x, None, generator(seed, "cpu"))


# ------------------------------------------------------------------ g
def test_log_det_is_zero_for_orthogonal_and_very_negative_for_parallel_gradients():
    d = 48
    eye = torch.eye(d)
    orth = torch.stack([3.0 * eye[0], -0.5 * eye[7], 2.0 * eye[20]])[None]          # 1×3×d, any lengths
    g_orth = log_det_diversity(orth)
    assert abs(float(g_orth) - 3 * math.log1p(RIDGE)) < 1e-6                          # log det((1+ridge)·I)
    v = torch.randn(d)
    par = torch.stack([v, 2 * v, 0.1 * v])[None]
    g_par = log_det_diversity(par)
    assert abs(float(g_par) - (math.log(3) + 2 * math.log(RIDGE))) < 0.05            # eigenvalues 3, ridge, ridge: ≈ −21.9
    mixed = torch.stack([v, v + 0.3 * torch.randn(d), torch.randn(d)])[None]
    assert float(g_par) < float(log_det_diversity(mixed)) < float(g_orth)            # more aligned, lower g


def test_g_is_differentiable_with_respect_to_the_shared_trunk():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    _, g, _ = member_losses_and_diversity(model, task, inputs, targets)
    assert g.shape == (len(inputs),) and bool((g <= 1e-4).all())
    g.mean().backward()
    for name in ("trunk.stem.0.weight", "trunk.layer3.0.conv1.weight",
                 "head.branches.rotation.layer4.0.conv1.weight", "head.branches.jigsaw.head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    # the trunk's own layer4 is not part of the ensemble (each branch has its copy)
    assert model.trunk.layer4[0].conv1.weight.grad is None


# ------------------------------------------------------------------ the objective
def _loss(kind, cfg, model, task, inputs, targets, steps=2):
    torch.manual_seed(1)  # Selfie's dropout
    return OBJECTIVES[kind](model, task, inputs, targets, generator(3, "cpu"), cfg, Threat(steps=steps))


def test_alpha_zero_is_plain_multitask_adversarial_training():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    ref_loss, ref_logits = _loss("adversarial", {"mix": "clean+adv"}, model, task, inputs, targets)
    loss, logits = _loss("ensemble", {"alpha": 0.0, "mix": "clean+adv"}, model, task, inputs, targets)
    assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
    # the full path (g through PGD and the weights) with a negligible α is the same training loss
    tiny, _ = _loss("ensemble", {"alpha": 1e-9, "mix": "clean+adv"}, model, task, inputs, targets)
    assert abs(float(tiny.detach()) - float(ref_loss.detach())) < 1e-3 * abs(float(ref_loss.detach()))


def test_sign_key_flips_the_regulariser_in_the_weights_loss():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    alpha = 0.5
    plus, _ = _loss("ensemble", {"alpha": alpha, "sign": 1}, model, task, inputs, targets, steps=1)
    minus, _ = _loss("ensemble", {"alpha": alpha, "sign": -1}, model, task, inputs, targets, steps=1)
    # the attacker is the same (it always ascends ℓ̄ + α·g), so the losses differ by 2·α·mean(g), g in (−22, 0]
    g_mean = (plus - minus).item() / (2 * alpha)
    assert 2 * math.log(RIDGE) + math.log(3) < g_mean < 0
    with pytest.raises(ValueError, match="sign"):
        _loss("ensemble", {"alpha": alpha, "sign": 2}, model, task, inputs, targets, steps=1)


# ------------------------------------------------------------------ the task
def test_members_are_built_from_the_same_image():
    model, task = ensemble_model()
    x, inputs, targets = batch(task, n=12)
    assert inputs.shape == (12, 3, 3, 32, 32)
    rot, jig = targets[:, 0], targets[:, 1]
    assert torch.equal(rotate(inputs[:, 0], (4 - rot) % 4), x)                       # undo the rotation
    assert torch.equal(task.tasks["jigsaw"].undo(inputs[:, 1], jig), x)              # undo the permutation
    assert torch.equal(inputs[:, 2], x)                                              # Selfie masks inside its loss
    _, logits = task.loss(model, inputs, targets)
    assert task.correct(logits, targets).shape == (12,)


def test_jigsaw_table_travels_with_the_checkpoint():
    _, task = ensemble_model()
    state = task.state()
    other = build_task("ensemble", {"ensemble": {"pretext": {"jigsaw": {"perm_seed": 99}}}}, state=state)
    assert torch.equal(other.tasks["jigsaw"].perms, task.tasks["jigsaw"].perms)
    assert not torch.equal(Jigsaw(perm_seed=99).perms, task.tasks["jigsaw"].perms)


def test_ensemble_pretraining_then_finetuning_transfers_the_shared_trunk(tiny_data, tmp_path):
    from advss.train import train

    pre = tmp_path / "pre"
    spec = train_spec(stage="pretrain", task="ensemble", pretext=PRETEXT, epochs=1, batch_size=64,
                      objective={"kind": "ensemble", "alpha": 0.1, "sign": 1, "mix": "clean+adv"},
                      select_by="last", augment=False, val_max=8,
                      threat={"eps": "8/255", "step": "2/255", "train_steps": 1, "eval_steps": 1})
    train(spec, tiny_data, pre / "model.pt", pre / "metrics.csv", pre / "meta.json", log=lambda m: None)
    ft = tmp_path / "ft"
    train(train_spec(epochs=1, val_max=8, eval_ra=False), tiny_data, ft / "model.pt", ft / "metrics.csv", ft / "meta.json",
          init=pre / "model.pt", log=lambda m: None)
    meta = json.loads((ft / "meta.json").read_text())
    kept = meta["transfer"]["kept_at_init"]
    assert kept and all(k.startswith("trunk.layer4.") for k in kept)                # stem..layer3 transferred
    pre_sd = torch.load(pre / "model.pt", weights_only=True)["state_dict"]
    init_sd = build(train_spec(), 10)[0].state_dict()
    changed = [k for k, v in pre_sd.items() if k.startswith("trunk.layer3.") and v.dtype.is_floating_point
               and not torch.equal(v, init_sd[k])]
    assert changed and meta["transfer"]["loaded"] == sum(k.startswith(("trunk.stem.", "trunk.layer1.", "trunk.layer2.",
                                                                         "trunk.layer3.")) for k in pre_sd)
