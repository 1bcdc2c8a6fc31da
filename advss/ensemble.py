"""Ensemble adversarial pretraining with the diversity-promoting regulariser (paper
eq. 2–4; Table 5's AP+SE and AP+DPE), as an objective of the one training loop.

The task is `advss.pretext.ensemble.Ensemble`: Rotation, Jigsaw and Selfie on a
shared stem..layer3, one input per member built from the same image. Its per-example
loss is the mean of the members' losses, ℓ̄.

Eq. (3), as written, is one saddle objective

    min_θ  E  max_δ  [ ℓ̄(θ, x + δ) + α · g(θ, δ) ],
    g = log det(GᵀG + ridge·I),  G = [∇_δ1 ℓ1/‖·‖, …, ∇_δM ℓM/‖·‖]   (d × M),

so the attacker (PGD on the M inputs jointly, one perturbation each) ascends
ℓ̄ + α·g — as the reference's `PGD_attack_3module` does — and the weights
minimise the pretext loss (clean+adv mean, as single-task P3) + sign·α·g at that δ,
with g taken with `create_graph` so that it trains the weights.

`sign` (set per pretraining by the config key `ensemble.signs`: `ensemble-dpe` = +1,
`ensemble-dpe-neg` = −1; Table 5 reports both):
  +1  eq. (3) as written and the reference code: the weights minimise the same
      +α·g that the attacker maximises. Since g ≤ 0 with 0 at orthogonal gradients,
      this pulls the members' input gradients towards each other.
  -1  the diversity-promoting reading (Pang et al. 2019 maximise their log-det
      ensemble diversity): the weights minimise ℓ − α·g.
α = 0 is AP+SE: plain multi-task AT (identical to the `adversarial` objective).
Scale note: the reference's attacker sums the three losses where this one (and the
weights) use their mean, so the reference's α acts 3× weaker inside its attack.
"""
from __future__ import annotations

import torch

from advss.attacks import Threat, bn_mode, pgd

RIDGE = 1e-5      # the paper's ridge: keeps GᵀG invertible when gradients align
NORM_EPS = 1e-10  # the reference adds it to each gradient norm (a zero gradient stays zero)


def log_det_diversity(grads: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """g per example from N×M×… input gradients: log det(GᵀG + ridge·I) of the
    L2-normalised, flattened columns. 0 (up to the ridge) for orthogonal gradients,
    about (M−1)·log(ridge) for parallel ones."""
    # Decided here, whatever the loop's precision: float64 outside autocast. bf16 cannot
    # hold the 1e-5 ridge next to 1 (its resolution there is ~0.008), torch.logdet
    # refuses bf16, and the M×M Gram of N examples costs nothing in float64. Cholesky
    # (the matrix is SPD) rather than logdet: `cholesky_ex` checks nothing on the
    # host, so a CUDA graph can hold it.
    with torch.autocast(grads.device.type, enabled=False):
        g = grads.flatten(2).double()
        g = g / (g.norm(dim=2, keepdim=True) + NORM_EPS)
        gram = g @ g.transpose(1, 2)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        chol, _ = torch.linalg.cholesky_ex(gram + ridge * eye)
        return (2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)).float()


def member_losses_and_diversity(model, task, x, targets, ridge: float = RIDGE):
    """Mean member loss (N), g (N) and packed logits at x. Each member's input
    gradient lies in its own slice of ∂(Σ losses)/∂x, since member k reads x[:, k]
    only; the graph is kept so g can be differentiated again (by PGD or the weights)."""
    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    losses, logits = task.member_losses(model, x, targets)
    grads, = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return losses.mean(1), log_det_diversity(grads, ridge), logits


def objective(model, task, inputs, targets, gen, cfg, threat: Threat):
    """Registered as OBJECTIVES['ensemble']. cfg: alpha, sign (+1|-1), mix, ridge."""
    alpha, sign, ridge = float(cfg.get("alpha", 0.0)), int(cfg.get("sign", 1)), float(cfg.get("ridge", RIDGE))
    if sign not in (1, -1):
        raise ValueError(f"ensemble objective: sign must be +1 or -1, not {sign!r}")
    if not hasattr(task, "member_losses"):
        raise ValueError(f"the ensemble objective needs the 'ensemble' task, not {task.name!r}")

    def at(x):
        """(loss per example, g per example or None, logits); no gradient work at α = 0."""
        if alpha == 0:
            loss, logits = task.loss(model, x, targets)
            return loss, None, logits
        return member_losses_and_diversity(model, task, x, targets, ridge)

    def attacker(z):
        loss, g, _ = at(z)
        return loss if g is None else loss + alpha * g

    with bn_mode(model, threat.bn_mode):
        x_adv = pgd(attacker, inputs, threat, gen)
    adv_loss, g, adv_logits = at(x_adv)
    mix = cfg.get("mix", "clean+adv")
    if mix == "adv":
        loss = adv_loss.mean()
    elif mix == "clean+adv":
        clean_loss, _ = task.loss(model, inputs, targets)
        loss = (clean_loss.mean() + adv_loss.mean()) / 2
    else:
        raise ValueError(f"objective.mix must be 'adv' or 'clean+adv', not {mix!r}")
    if g is not None:
        loss = loss + sign * alpha * g.mean()
    return loss, adv_logits


# ------------------------------------------------------------------ Table 5
SIGN_EFFECT = {  # what each sign of α·g in the weights' loss does to g, for Table 5's caption
    1: "the weights minimise ℓ + α·g, as eq. (3) and the reference code do; this pushes g down, "
       "pulling the members' input gradients together (aligned)",
    -1: "the weights minimise ℓ − α·g, the diversity-promoting reading of the text; this pushes g up, "
        "pushing the members' input gradients apart (towards orthogonal)",
}


def table5(spec: dict, prefix):
    """Single-task (P3,F4) models next to AP+SE and AP+DPE, a row per sign in
    spec['ensemble_signs'], fine-tuned alike (and any other fine-tuning modes listed
    under spec['ensemble_finetune']). The paper reports one AP+DPE: its values stand
    beside each sign's row, since which sign gives its effect is the open question."""
    import pandas as pd

    from advss import protocol as P
    from advss.report import aggregate, autoattack_note, drop_empty, finetune_result, result_columns, seeds_phrase, write_table

    signs = spec["ensemble_signs"]
    models = [(P.TASK_LABEL[t], P.pretrain_id(t, "P3"), t) for t in spec["tasks"]]
    models += [("AP+SE", "ensemble-se", "AP+SE")]
    models += [(P.ENSEMBLE_DPE[s][1], P.ensemble_dpe_id(s), "AP+DPE") for s in signs]
    rows = []
    for f in spec.get("ensemble_finetune", ["F4"]):
        for label, src, key in models:
            for seed in spec["seeds"]:
                r = finetune_result(spec["run_dir"], src, P.finetune_id(f), seed)
                rows.append({"scenario": f"(P3,{f})", "model": label, "source": src, "key": key, "seed": seed, **r})
    agg = aggregate(pd.DataFrame(rows), ["scenario", "model", "source", "key"], ["ta", "ra", "ra_aa", "epochs"])
    paper = [P.PAPER_TABLE5.get(k, (None,) * 3) if s == "(P3,F4)" else (None,) * 3
             for s, k in zip(agg["scenario"], agg["key"])]
    agg["paper_ta"], agg["paper_ra"], agg["paper_epochs"] = zip(*paper)
    agg = agg.drop(columns="key")
    display = pd.DataFrame({"Scenario": agg["scenario"], "Model": agg["model"], **result_columns(agg)})
    aa_note = autoattack_note(display, spec.get("autoattack_n"))
    agg = drop_empty(agg)
    n = int(agg["n_seeds"].min())
    effects = " ".join(f"{P.ENSEMBLE_DPE[s][1]}: {SIGN_EFFECT[s]}." for s in signs)
    caption = (f"Table 5 ({spec['run']}): single-task (P3,F4) models vs ensemble adversarial pretraining without "
               f"(AP+SE, α = 0) and with the log-det regulariser (AP+DPE, α = {spec['ensemble_alpha']}), each "
               f"fine-tuned alike. g = log det(GᵀG + ridge·I) of the members' normalised input gradients is ≤ 0, "
               f"and 0 when they are orthogonal; the attacker ascends ℓ̄ + α·g under either sign. {effects} "
               f"Test TA / RA (PGD-{spec['eval_steps']}, %) and epochs to best validation RA, {seeds_phrase(n)}; "
               f"paper values (CIFAR-10, ResNet-50) beside, its one AP+DPE beside each sign.{aa_note} "
               f"config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg
