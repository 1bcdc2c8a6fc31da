"""What one training step minimises. Each objective maps (model, task, batch) to a
scalar loss and calls the attack on the very loss it trains.

    standard     mean task loss on clean inputs (ST: P2, F1, F3)
    adversarial  Madry AT (F2, F4: mix='adv') or clean+adv mean (P3: mix='clean+adv')
    trades       CE(clean) + β·KL(p_clean ‖ p_adv), attack maximises the KL (Zhang et al. 2019)
    smoothing    task loss on Gaussian-noised inputs (Cohen et al. 2019; Table 8), no attack

Every objective draws its randomness through `gen`, a torch.Generator or the training
step's `Draws` (advss/step.py), so that a captured CUDA graph replays the same numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advss.attacks import Threat, bn_mode, pgd
from advss.step import randn_like


def standard(model, task, inputs, targets, gen, cfg, threat):
    loss, logits = task.loss(model, inputs, targets)
    return loss.mean(), logits


def adversarial(model, task, inputs, targets, gen, cfg, threat: Threat):
    with bn_mode(model, threat.bn_mode):
        x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen)
    adv_loss, adv_logits = task.loss(model, x_adv, targets)
    mix = cfg.get("mix", "adv")
    if mix == "adv":
        return adv_loss.mean(), adv_logits
    if mix == "clean+adv":
        clean_loss, _ = task.loss(model, inputs, targets)
        return (clean_loss.mean() + adv_loss.mean()) / 2, adv_logits
    raise ValueError(f"objective.mix must be 'adv' or 'clean+adv', not {mix!r}")


def trades(model, task, inputs, targets, gen, cfg, threat: Threat):
    beta = float(cfg.get("trades_beta", 6.0))
    with torch.no_grad():
        p_clean = F.softmax(model(inputs), -1)

    def kl(z):
        return F.kl_div(F.log_softmax(model(z), -1), p_clean, reduction="none").sum(-1)

    start = (inputs + 0.001 * randn_like(inputs, gen)).clamp(0, 1)  # TRADES starts near x, not uniformly
    with bn_mode(model, threat.bn_mode):
        x_adv = pgd(kl, start, Threat(threat.norm, threat.eps, threat.step, threat.steps, False, threat.bn_mode), gen)
        x_adv = torch.min(torch.max(x_adv, inputs - threat.eps), inputs + threat.eps).clamp(0, 1)
    logits = model(inputs)
    robust = F.kl_div(F.log_softmax(model(x_adv), -1), F.softmax(logits, -1), reduction="batchmean")
    return F.cross_entropy(logits, targets) + beta * robust, logits


def smoothing(model, task, inputs, targets, gen, cfg, threat):
    """Cohen et al. 2019 add N(0, σ²) to the image and do not clip: the noisy input may
    leave [0,1] (the model normalises whatever it gets), so σ is the noise actually seen."""
    noisy = inputs + float(cfg.get("sigma", 0.25)) * randn_like(inputs, gen)
    loss, logits = task.loss(model, noisy, targets)
    return loss.mean(), logits


OBJECTIVES = {"standard": standard, "adversarial": adversarial, "trades": trades, "smoothing": smoothing}
OBJECTIVES["ensemble"] = lambda *a: __import__("advss.ensemble", fromlist=["objective"]).objective(*a)  # eq. (3), Table 5


def needs_double_backward(cfg: dict) -> bool:
    """AP+DPE differentiates the input gradients again (create_graph): torch.compile
    refuses double backward, so the loop runs such a job without a compiled trunk."""
    return cfg.get("kind") == "ensemble" and float(cfg.get("alpha", 0.0)) != 0.0
