"""Test-set evaluation: the per-batch attack loops every job uses, the ensemble of
softmax-averaged members, checkpoint loading and the `evaluate` command.

`evaluate` scores a (task, model) pair clean and under PGD batch by batch; `craft`
keeps the PGD examples of the same batches and generators (transfer attacks);
`pgd_correct` attacks cross-entropy on a plain classifier (the robustness suites'
PGD-k reference). All three draw batch b's randomness from `batch_generator(seed, b)`,
so they attack with the same random starts. They stay three loops because each
fixes a different shape of batches (padded, unpadded over tasks, unpadded on raw
logits) and merging them would change which numbers are drawn.

`run` is `python -m advss evaluate`: TA, PGD RA and the per-example vectors
(clean/adversarial correctness and predictions) that transfer attacks and Venn
diagrams are computed from.
"""
from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from advss import data as D
from advss import models as M
from advss.attacks import Threat, pgd
from advss.fast import apply_fast, autocast, fast_settings
from advss.io import batch_seed, generator, pick_device, provenance, save_npz, set_deterministic, write_json
from advss.pretext import build_task


# ----------------------------------------------------------------- models
def load_classifier(path, model_cfg, num_classes, device):
    """advss.models.load_classifier, with the classification task the attack loops take."""
    return M.load_classifier(path, model_cfg, num_classes, device), build_task("classification", {}, num_classes)


def prepare_model(model, spec, dev):
    """The device placement of `run`: channels-last and compile as the fast settings
    say, but always fp32 (reported numbers must not depend on the precision chosen
    for training speed: a low-precision attack can be weaker)."""
    return apply_fast(model, dev, fast_settings(spec, dev))


class SoftmaxAverage(nn.Module):
    """An ensemble as one classifier: x -> log(mean_m softmax(member_m(x))), so that
    cross-entropy on it is the NLL of the averaged prediction and argmax is the
    ensemble's. Two numerics, kept as each result was first computed:
    floor=None  logsumexp of the members' log-softmax (Table 6's ensembles); one
                member returns its own logits, which have the same softmax;
    floor=f     log(max(mean softmax, f)) (the robustness suites' ensembles)."""

    def __init__(self, members, floor: float | None = None):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.floor = floor

    def forward(self, x):
        if self.floor is not None:
            probs = torch.stack([m(x).softmax(-1) for m in self.members]).mean(0)
            return probs.clamp_min(self.floor).log()
        if len(self.members) == 1:
            return self.members[0](x)
        logp = torch.stack([F.log_softmax(m(x), -1) for m in self.members])
        return torch.logsumexp(logp, 0) - math.log(len(self.members))


def softmax_average(members, floor: float | None = None) -> SoftmaxAverage:
    return SoftmaxAverage(members, floor)


def test_split(data, n_examples=None):
    x, y = data["test"]
    return (x[:n_examples], y[:n_examples]) if n_examples else (x, y)


@contextlib.contextmanager
def fp32(dev):
    """Full fp32 for the evaluation, whatever the caller set: autocast off (bf16 training
    must not leak into the test-set numbers) and TF32 off for CUDA matmuls and convs."""
    cuda = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=getattr(dev, "type", str(dev)), enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = cuda


# ----------------------------------------------------------------- the loops
def batch_generator(seed: int, b: int, device):
    """Batch b's generator in every evaluation loop (epoch -1: never a training batch's)."""
    return generator(batch_seed(seed, -1, b), device)


def evaluate(model, task, x, y, threat: Threat | None, batch_size: int, seed: int = 0, bf16: bool = False):
    """Clean and (optionally) PGD correctness per example, model in eval mode.
    Returns dict of float tensors: clean, adv (or None), pred_clean, pred_adv.
    The last batch is padded to `batch_size` (results of the padding dropped), so a
    compiled model sees one shape; in eval mode examples do not interact."""
    with autocast(x.device, bf16):
        return _evaluate(model, task, x, y, threat, batch_size, seed)


def _pad(t, n):
    """t with its first rows repeated until it has n rows."""
    if len(t) == n:
        return t
    reps = -(-n // len(t))
    return torch.cat([t] * reps)[:n]


def _evaluate(model, task, x, y, threat, batch_size, seed):
    was = model.training
    model.eval()
    clean, adv, pc, pa = [], [], [], []
    batch_size = min(batch_size, len(x))
    for b, i in enumerate(range(0, len(x), batch_size)):
        gen = batch_generator(seed, b, x.device)
        n = len(x[i:i + batch_size])
        xb = _pad(x[i:i + batch_size], batch_size)
        yb = _pad(y[i:i + batch_size], batch_size)
        xb = D.to_float(xb) if xb.dtype == torch.uint8 else xb
        inputs, targets = task.make_batch(xb, yb, gen)
        with torch.no_grad():
            _, logits = task.loss(model, inputs, targets)
        clean.append(task.correct(logits, targets)[:n].float())
        pc.append(logits.argmax(-1)[:n])
        if threat is not None:
            with task.adversarial(model):  # a dual-BN pretext task (ACL) attacks through its adversarial BN
                x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen)
                with torch.no_grad():
                    _, logits_adv = task.loss(model, x_adv, targets)
            adv.append(task.correct(logits_adv, targets)[:n].float())
            pa.append(logits_adv.argmax(-1)[:n])
    model.train(was)
    cat = lambda v: torch.cat(v).cpu() if v else None  # noqa: E731
    return {"clean": cat(clean), "adv": cat(adv), "pred_clean": cat(pc), "pred_adv": cat(pa)}


def craft(model, task, x, y, threat, batch_size, seed=0, bf16=False):
    """PGD examples on `model` (eval mode), batch by batch with the generators that
    `evaluate` uses, so they are the very examples its RA is measured on."""
    model.eval()
    out = []
    with autocast(x.device, bf16):
        for b, i in enumerate(range(0, len(x), batch_size)):
            gen = batch_generator(seed, b, x.device)
            inputs, targets = task.make_batch(D.to_float(x[i:i + batch_size]), y[i:i + batch_size], gen)
            out.append(pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen))
    return torch.cat(out)


def predict_correct(model, x, y, batch_size):
    """argmax(model(x)) == y per example, batch by batch, without gradients."""
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                          for i in range(0, len(x), batch_size)])


def pgd_correct(model, x, y, threat, batch_size, seed):
    """Correctness under PGD on cross-entropy, model in eval mode (as `advss evaluate`)."""
    out = []
    for b, i in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = pgd(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, threat,
                    batch_generator(seed, b, x.device))
        out.append(predict_correct(model, x_adv, yb, batch_size))
    return torch.cat(out)


# ----------------------------------------------------------------- `advss evaluate`
def run(spec: dict, data_path, model_path, out_json, out_npz, device="auto"):
    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    model, task = load_classifier(model_path, spec["model"], data["num_classes"], dev)
    x, y = test_split(data, spec.get("n_examples"))
    threat = Threat.from_cfg(spec["threat"], "eval_steps")
    model = prepare_model(model, spec, dev)
    # fp32 whatever the training precision: the reported TA/RA (and model selection's
    # counterpart, the test numbers) must not depend on a speed setting
    with fp32(dev):
        ev = evaluate(model, task, x, y, threat, int(spec.get("batch_size", 256)), int(spec.get("seed", 0)))
    save_per_example(out_npz, y, ev)
    res = {"ta": float(ev["clean"].mean()), "ra": float(ev["adv"].mean()), "n": int(len(y)),
           "attack": f"pgd{threat.steps}-{threat.norm}", "eps": threat.eps, "eval_precision": "fp32"}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, model=str(model_path))})
    return res


def save_per_example(out_npz, y, ev):
    """The per-example vectors of an `evaluate` result (single model or ensemble)."""
    save_npz(out_npz, y=y.cpu().numpy(), correct_clean=ev["clean"].numpy().astype(bool),
             correct_adv=ev["adv"].numpy().astype(bool), pred_clean=ev["pred_clean"].numpy(),
             pred_adv=ev["pred_adv"].numpy())
