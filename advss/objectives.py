"""What one training step minimises. Each objective maps (model, task, batch) to a
scalar loss and calls the attack on the very loss it trains.

    standard     mean task loss on clean inputs (ST: P2, F1, F3)
    adversarial  Madry AT (F2, F4: mix='adv') or clean+adv mean (P3: mix='clean+adv')
    trades       CE(clean) + β·KL(p_clean ‖ p_adv), attack maximises the KL (Zhang et al. 2019)
    smoothing    task loss on Gaussian-noised inputs (Cohen et al. 2019; Table 8), no attack
    acl          ACL's dual-stream contrastive AT, DynACL's weighting (the contrastive task's P3)
    ensemble     ensemble adversarial pretraining with the log-det diversity term (eq. 2–4; Table 5)

Every objective draws its randomness through `gen`, a torch.Generator or the training
step's `Draws` (advss/step.py), so that a captured CUDA graph replays the same numbers.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from advss.attacks import Threat, bn_mode, pgd
from advss.dualbn import bn_route
from advss.step import randn_like


def standard(model, task, inputs, targets, gen, cfg, threat):
    loss, logits = task.loss(model, inputs, targets)
    return loss.mean(), logits


def mixed(model, task, inputs, targets, adv_loss, mix: str):
    """The weights' loss from the per-example adversarial loss: its mean (mix='adv',
    Madry AT) or the mean of the clean and adversarial means (mix='clean+adv', P3)."""
    if mix == "adv":
        return adv_loss.mean()
    if mix == "clean+adv":
        clean_loss, _ = task.loss(model, inputs, targets)
        return (clean_loss.mean() + adv_loss.mean()) / 2
    raise ValueError(f"objective.mix must be 'adv' or 'clean+adv', not {mix!r}")


def adversarial(model, task, inputs, targets, gen, cfg, threat: Threat):
    with bn_mode(model, threat.bn_mode):
        x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen)
    adv_loss, adv_logits = task.loss(model, x_adv, targets)
    return mixed(model, task, inputs, targets, adv_loss, cfg.get("mix", "adv")), adv_logits


def trades(model, task, inputs, targets, gen, cfg, threat: Threat):
    """TRADES (Zhang et al. 2019): CE(clean) + β·KL(p_clean ‖ p_adv), the attack ascending
    the KL from a start near x. As ACL's `trades.py` and RSB's `trades_loss(_dual)` do, the
    attack, its clean target included, runs in the crafting BN mode (`threat.bn_mode`: eval
    there; 'train' uses batch statistics), and neither moves BN's running statistics; the
    weights' loss then runs in train mode. On a dual-BN model (RSB's AFF after ACL/DynACL,
    `trades_loss_dual`) clean inputs pass the clean BN copy and adversarial ones the
    adversarial copy (`bn_route`); a plain model ignores the routes.
    cfg: trades_beta (β, 6 for CIFAR-10), start_std (the start's N(0, σ²) noise: 0.001 in
    TRADES and ACL, 0 in RSB, whose dual loss starts at x)."""
    beta, std = float(cfg.get("trades_beta", 6.0)), float(cfg.get("start_std", 0.001))
    if beta < 0 or std < 0:
        raise ValueError(f"trades objective: trades_beta and start_std must be >= 0, not {beta}, {std}")
    with bn_mode(model, threat.bn_mode):
        with torch.no_grad(), bn_route(model, "clean"):
            p_clean = F.softmax(model(inputs), -1)

        def kl(z):
            with bn_route(model, "adv"):
                return F.kl_div(F.log_softmax(model(z), -1), p_clean, reduction="none").sum(-1)

        start = (inputs + std * randn_like(inputs, gen)).clamp(0, 1) if std else inputs
        x_adv = pgd(kl, start, dataclasses.replace(threat, random_start=False), gen)
        x_adv = torch.min(torch.max(x_adv, inputs - threat.eps), inputs + threat.eps).clamp(0, 1)
    with bn_route(model, "clean"):
        logits = model(inputs)
    with bn_route(model, "adv"):
        adv_logits = model(x_adv)
    robust = F.kl_div(F.log_softmax(adv_logits, -1), F.softmax(logits, -1), reduction="batchmean")
    return F.cross_entropy(logits, targets) + beta * robust, logits


def smoothing(model, task, inputs, targets, gen, cfg, threat):
    """Cohen et al. 2019 add N(0, σ²) to the image and do not clip: the noisy input may
    leave [0,1] (the model normalises whatever it gets), so σ is the noise actually seen."""
    noisy = inputs + float(cfg.get("sigma", 0.25)) * randn_like(inputs, gen)
    loss, logits = task.loss(model, noisy, targets)
    return loss.mean(), logits


def acl(model, task, inputs, targets, gen, cfg, threat: Threat):
    """ACL's dual-stream (DS) objective (Jiang et al. 2020, their best variant), with
    DynACL's weight: ((2−w)·ℓ(clean views) + w·ℓ(adversarial views)) / 2. PGD maximises
    the task's loss (NT-Xent) on both views within the ε-ball; both the attack and the
    adversarial loss run under `task.adversarial` (ACL's adversarial BN). w is the
    task's `adv_weight`, a device tensor (1 for ACL; annealed per epoch by DynACL), so a
    CUDA graph reads each epoch's value without a recapture."""
    with task.adversarial(model):
        with bn_mode(model, threat.bn_mode):
            x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen)
        adv_loss, adv_logits = task.loss(model, x_adv, targets)
    clean_loss, _ = task.loss(model, inputs, targets)
    w = getattr(task, "adv_weight", 1.0)
    return ((2 - w) * clean_loss.mean() + w * adv_loss.mean()) / 2, adv_logits


# ------------------------------------------------------------------ ensemble (Table 5)
# Ensemble adversarial pretraining with the diversity-promoting regulariser (paper
# eq. 2–4; Table 5's AP+SE and AP+DPE), as an objective of the one training loop.
#
# The task is `advss.pretext.ensemble.Ensemble`: Rotation, Jigsaw and Selfie on a
# shared stem..layer3, one input per member built from the same image, member i's
# per-example loss ℓᵢ.
#
# Each sign s of α·g (set per pretraining by the config key `ensemble.signs`:
# `ensemble-dpe` = +1, `ensemble-dpe-neg` = −1; Table 5 reports both) enters the
# attack and the update alike, one min-max of the loss + s·α·g (eq. 3 for s = +1):
#
#     min_θ  E  max_δ  [ Σᵢ ℓᵢ(θ, x + δᵢ) + s·α·g(θ, δ) ],
#     g = log det(GᵀG + ridge·I),  G = [∇_δ1 ℓ1/‖·‖, …, ∇_δM ℓM/‖·‖]   (d × M).
#
#   attack  PGD on the M inputs jointly (one perturbation each) ascends Σᵢ ℓᵢ + s·α·g,
#           the sum as in eq. (3) and the reference's `PGD_attack_3module` (PGD's sign
#           steps see only the ratio of the two terms, so the sum, not the mean, fixes
#           what α means).
#   update  the weights minimise the pretext loss (clean+adv mean of the member means,
#           as single-task P3 and the reference) + s·α·g at that δ, with g taken with
#           `create_graph` so that it trains the weights.
#
#   +1  eq. (3) as written and the reference code. Since g ≤ 0 with 0 at orthogonal
#       gradients, the attacker seeks inputs where the members' gradients disagree and
#       the update pulls them together (g down).
#   -1  the diversity-promoting reading (Pang et al. 2019 maximise their log-det
#       ensemble diversity): min-max of ℓ − α·g. The attacker seeks inputs where the
#       gradients align and the update pushes them apart (g up).
# α = 0 is AP+SE: plain multi-task AT, the `adversarial` objective (PGD's steps do
# not see a common scale of the loss, so its mean and Σᵢ ℓᵢ give the same attack).
RIDGE = 1e-5      # the paper's ridge: keeps GᵀG invertible when gradients align
NORM_EPS = 1e-10  # the reference adds it to each gradient norm (a zero gradient stays zero)


def logdet_spd(a: torch.Tensor) -> torch.Tensor:
    """log det of a batch (…×k×k) of small SPD matrices by an unrolled LDLᵀ factorisation:
    elementwise ops only, so no cuSOLVER call and no host sync (a CUDA graph can hold it;
    cuSOLVER's support for stream capture is undocumented). Backward-stable like Cholesky:
    each pivot is a Schur complement, never a difference of whole determinant terms, which
    would lose ~1e-6 of relative accuracy at the ridge's eigenvalues. The op count grows as k³,
    nothing for the ensemble's k = 3."""
    k = a.shape[-1]
    lower, pivots = {}, []
    for j in range(k):
        pivots.append(a[..., j, j] - sum(lower[j, m] ** 2 * pivots[m] for m in range(j)))
        for i in range(j + 1, k):
            lower[i, j] = (a[..., i, j] - sum(lower[i, m] * lower[j, m] * pivots[m] for m in range(j))) / pivots[j]
    return sum(p.log() for p in pivots)


def log_det_diversity(grads: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """g per example from N×M×… input gradients: log det(GᵀG + ridge·I) of the
    L2-normalised, flattened columns. 0 (up to the ridge) for orthogonal gradients,
    about (M−1)·log(ridge) for parallel ones."""
    # Decided here, whatever the loop's precision: float64 outside autocast. bf16 cannot
    # hold the 1e-5 ridge next to 1 (its resolution there is ~0.008), torch.logdet
    # refuses bf16, and the M×M Gram of N examples costs nothing in float64.
    with torch.autocast(grads.device.type, enabled=False):
        g = grads.flatten(2).double()
        g = g / (g.norm(dim=2, keepdim=True) + NORM_EPS)
        gram = g @ g.transpose(1, 2)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        return logdet_spd(gram + ridge * eye).float()


def member_losses_and_diversity(model, task, x, targets, ridge: float = RIDGE):
    """Member losses (N×M), g (N) and packed logits at x. Each member's input
    gradient lies in its own slice of ∂(Σ losses)/∂x, since member k reads x[:, k]
    only; the graph is kept so g can be differentiated again (by PGD or the weights)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with double_backward_attention():
        losses, logits = task.member_losses(model, x, targets)
    grads, = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return losses, log_det_diversity(grads, ridge), logits


# The path that is differentiated twice: convolution (cuDNN's backward has its double
# backward, `_convolution_double_backward`), BatchNorm (`batchnorm_double_backward`),
# LayerNorm, ReLU, dropout, embedding, gather, softmax/log-softmax, pooling as a mean, the
# log-det's elementwise ops: all have double-backward formulas in derivatives.yaml. Attention
# does not: the fused SDPA kernels (flash, memory-efficient, cuDNN; a CPU's flash kernel when
# dropout is 0) have none ("derivative for aten::_scaled_dot_product_flash_attention_backward is
# not implemented", pytorch/pytorch issue 116350), so the forward runs on the math kernel,
# plain matmul/softmax/dropout ops that do.
def double_backward_attention():
    """Scaled-dot-product attention on the math kernel (see the comment above)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def attention_kernel(cfg: dict) -> tuple[str, str]:
    """Which SDPA kernel the objective's attention runs on, and why (the job's log and meta.json)."""
    if needs_double_backward(cfg):
        return "math", "math: the objective differentiates twice, and the fused kernels have no double backward"
    return "auto", "auto: PyTorch's choice (a fused kernel where one applies)"


def ensemble(model, task, inputs, targets, gen, cfg, threat: Threat):
    """Ensemble adversarial pretraining, eq. (3) (see the section comment above).
    cfg: alpha, sign (+1|-1), mix, ridge."""
    alpha, sign, ridge = float(cfg.get("alpha", 0.0)), int(cfg.get("sign", 1)), float(cfg.get("ridge", RIDGE))
    if sign not in (1, -1):
        raise ValueError(f"ensemble objective: sign must be +1 or -1, not {sign!r}")
    if not hasattr(task, "member_losses"):
        raise ValueError(f"the ensemble objective needs the 'ensemble' task, not {task.name!r}")
    mix = cfg.get("mix", "clean+adv")
    if alpha == 0:  # AP+SE: no gradient work
        return adversarial(model, task, inputs, targets, gen, {"mix": mix}, threat)

    def attacker(z):
        losses, g, _ = member_losses_and_diversity(model, task, z, targets, ridge)
        return losses.sum(1) + sign * alpha * g

    with bn_mode(model, threat.bn_mode):
        x_adv = pgd(attacker, inputs, threat, gen)
    adv_losses, g, adv_logits = member_losses_and_diversity(model, task, x_adv, targets, ridge)
    loss = mixed(model, task, inputs, targets, adv_losses.mean(1), mix)
    return loss + sign * alpha * g.mean(), adv_logits


OBJECTIVES = {"standard": standard, "adversarial": adversarial, "trades": trades, "smoothing": smoothing,
              "acl": acl,
              "ensemble": ensemble}


def needs_double_backward(cfg: dict) -> bool:
    """AP+DPE differentiates the input gradients again (create_graph): torch.compile
    refuses double backward, so the loop runs such a job without a compiled trunk."""
    return cfg.get("kind") == "ensemble" and float(cfg.get("alpha", 0.0)) != 0.0
