"""Robustness beyond PGD: AutoAttack, the unforeseen attacks and CIFAR-10-C.

`python -m advss robustness SUITE --spec … --data … --model … --out-json … --out-npz …`
evaluates one fine-tuned model (or, with `--model` repeated, the softmax average of
several: Table 6's ensembles) on a seeded subset of the test set, which is the same
for every model so that models are compared on identical images:

- autoattack:  the authors' AutoAttack (package pyautoattack: APGD-CE, APGD-T, FAB-T,
  Square; L∞, ε = threat.eps; version "standard", or "custom" = the same four attacks
  with a smaller budget), the in-house one (advss.attacks.autoattack, no FAB-T) as a
  cross-check, and PGD-k, all on the same images;
- unforeseen:  Kang et al. 2019's suite at the configured ε (advex-uar units; Fog,
  Gabor and Snow have no 32-px calibration: see advss.attacks.unforeseen.UNCALIBRATED);
- corruptions: CIFAR-10-C accuracy per corruption and severity, from the official
  `.npy` files where the configured directory has them, generated otherwise.

The tables and figures built from those files are in advss.report.robustness; their
paths in advss.results.

Every test-set evaluation here runs in fp32 whatever the training precision (no
autocast, no TF32), and each result file records it as "eval_precision".
"""
from __future__ import annotations

import time
from pathlib import Path

from advss import protocol as P

# defined in advss.protocol, which the workflow reads at parse time without this module
SUITES = P.ROBUSTNESS_SUITES
REVISION = P.ROBUSTNESS_REVISION  # bump (in protocol.py) after a bug fix in this module
SEED_STRIDE = 1000  # corruption noise seed = seed*STRIDE^2 + corruption*STRIDE + severity: distinct per cell
EVAL_PRECISION = "fp32"  # attacks and accuracies of every suite; recorded in each result file


# ------------------------------------------------------------------ evaluation
def pick_examples(n_total: int, n, seed: int):
    """Indices of a seeded random subset of n test images (sorted), or all of them."""
    import torch

    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(int(seed)))[:n].sort().values


def load_model(paths, model_cfg, num_classes, device):
    """One classifier, or the softmax average of several (log of the mean
    probability as logits, so cross-entropy and argmax are the ensemble's own)."""
    from advss.evaluate import load_classifier, softmax_average

    members = [load_classifier(p, model_cfg, num_classes, device)[0] for p in paths]
    if len(members) == 1:
        return members[0]
    return softmax_average(members, floor=1e-12).to(device).eval()  # 1e-12: log(0) would make the loss infinite


def autoattack_settings(aa: dict) -> dict:
    """version and budget of the `autoattack` config part (advss.protocol.autoattack_settings,
    which the workflow calls at parse time), refused as an AdvssError."""
    from advss.io import AdvssError

    try:
        return P.autoattack_settings(aa)
    except ValueError as e:
        raise AdvssError(str(e)) from None


def eval_autoattack(model, x, y, x_uint8, spec):
    """pyautoattack's RA (the primary number), the in-house RA (cross-check) and PGD-k's."""
    from advss.attacks import Threat
    from advss.attacks.autoattack import COMPONENTS, LEFT_OUT, autoattack, pyautoattack_eval
    from advss.evaluate import pgd_correct, predict_correct
    from advss.io import AdvssError

    aa, threat = spec["autoattack"], spec["threat"]
    if threat.get("norm", "linf") != "linf":
        raise AdvssError(f"AutoAttack is implemented for L∞ only; threat.norm is {threat['norm']!r}")
    cfg = autoattack_settings(aa)
    budget = {k: cfg[k] for k in ("n_iter", "n_target_classes", "n_queries", "fab_n_iter")}
    ref = Threat.from_cfg({**threat, "pgd_steps": aa["pgd_steps"]}, "pgd_steps")  # PGD-k on the same images
    eps, bs, seed = ref.eps, int(spec.get("batch_size", 256)), int(spec["subset_seed"])
    primary = pyautoattack_eval(model, x, y, eps, version=cfg["version"], seed=seed, batch_size=bs, **budget)
    clean, pgd_ok = predict_correct(model, x, y, bs), pgd_correct(model, x, y, ref, bs, seed)
    res = {"ta": clean.float().mean().item(), "ra": primary["robust"].float().mean().item(),
           "ra_pgd": pgd_ok.float().mean().item(), "pgd_steps": ref.steps, "eps": eps,
           "attack": f"autoattack-{cfg['version']}-linf", "implementation": primary["package"],
           "version": cfg["version"], "per_component": primary["per_component"], "components": primary["attacks"],
           "left_out": [], **budget, "n_target_classes_used": primary["n_target_classes_used"]}
    arrays = {"correct_clean": clean, "correct_adv": primary["robust"], "correct_pgd": pgd_ok}
    if cfg["inhouse"]:
        own = autoattack(model, x, y, eps=eps, n_iter=budget["n_iter"], seed=seed, batch_size=bs,
                         n_queries=budget["n_queries"], n_target_classes=budget["n_target_classes"])
        res["ra_inhouse"] = own["robust"].float().mean().item()
        res["inhouse"] = {"implementation": "advss.attacks.autoattack", "per_component": own["per_component"],
                          "components": list(COMPONENTS), "left_out": list(LEFT_OUT)}
        arrays["correct_adv_inhouse"] = own["robust"]
    return res, arrays


def eval_unforeseen(model, x, y, x_uint8, spec):
    from advss.attacks.unforeseen import ATTACKS, CALIBRATIONS, UNCALIBRATED
    from advss.evaluate import predict_correct

    uf, bs, seed = spec["unforeseen"], int(spec.get("batch_size", 256)), int(spec["subset_seed"])
    clean = predict_correct(model, x, y, bs)
    acc, arrays = {}, {"correct_clean": clean}
    for name, eps_list in uf["attacks"].items():
        attack_step = (uf.get("step_sizes") or {}).get(name)  # None = the library's rule
        acc[name] = {}
        for eps in eps_list:
            attack = ATTACKS[name](eps, int(uf["n_iter"]), attack_step)
            ok = predict_correct(model, _batched(attack, model, x, y, bs, seed), y, bs)
            acc[name][str(eps)] = ok.float().mean().item()  # str: keeps every digit of a calibrated ε
            arrays[f"{name}@{eps}"] = ok
    calibration = {a: {"calibrated": a not in UNCALIBRATED, **{k: CALIBRATIONS[a][k] for k in ("calibrated_for", "source")}}
                   for a in acc}
    return {"ta": clean.float().mean().item(), "acc": acc, "n_iter": int(uf["n_iter"]),
            "step_sizes": uf.get("step_sizes") or {}, "calibration": calibration}, arrays


def _batched(attack, model, x, y, bs, seed):
    import torch

    return torch.cat([attack(model, x[i:i + bs], y[i:i + bs], seed=seed + i) for i in range(0, len(x), bs)])


def corrupted_images(x_uint8, y, idx, corruption, severity, root, seed):
    """(uint8 images, source) for one cell: the official file's rows `idx` when `root`
    holds `<corruption>.npy` (their labels must match ours), else generated."""
    from advss.corruptions import CORRUPTIONS, corrupt, load_cifar10c
    from advss.io import AdvssError

    if root and (Path(root) / f"{corruption}.npy").is_file():
        xc, yc = load_cifar10c(root, corruption, severity)
        if len(yc) <= int(idx.max()) or not (yc[idx].to(y.device) == y).all():
            raise AdvssError(f"{root}: the labels of {corruption}.npy do not match this run's test set "
                             "(CIFAR-10-C belongs with data.name: cifar10 and no n_test)")
        return xc[idx].to(x_uint8.device), "cifar10-c"
    cell_seed = (seed * SEED_STRIDE + CORRUPTIONS.index(corruption)) * SEED_STRIDE + severity
    return corrupt(x_uint8, corruption, severity, seed=cell_seed), "generated"


def eval_corruptions(model, x, y, x_uint8, spec):
    from advss import data as D
    from advss.corruptions import CORRUPTIONS, SEVERITIES
    from advss.evaluate import predict_correct

    cc, bs = spec["corruptions"], int(spec.get("batch_size", 256))
    clean = predict_correct(model, x, y, bs)
    acc, source, arrays = {}, {}, {"correct_clean": clean}
    for c in cc.get("corruptions") or CORRUPTIONS:
        acc[c] = {}
        for s in cc.get("severities") or SEVERITIES:
            xc, source[c] = corrupted_images(x_uint8, y, spec["_idx"], c, s, cc.get("root"), int(spec["subset_seed"]))
            ok = predict_correct(model, D.to_float(xc), y, bs)
            acc[c][str(s)] = ok.float().mean().item()
            arrays[f"{c}@{s}"] = ok
    cells = [v for per in acc.values() for v in per.values()]
    return {"ta": clean.float().mean().item(), "acc": acc, "source": source,
            "mean": sum(cells) / len(cells)}, arrays


EVALUATORS = {"autoattack": eval_autoattack, "unforeseen": eval_unforeseen, "corruptions": eval_corruptions}


def run(suite, spec: dict, data_path, model_paths, out_json, out_npz, device="auto"):
    from advss import data as D
    from advss.evaluate import fp32
    from advss.io import pick_device, provenance, save_npz, set_deterministic, write_json

    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    model = load_model(model_paths, spec["model"], data["num_classes"], dev)
    x_all, y_all = data["test"]
    idx = pick_examples(len(y_all), spec.get("n_examples"), int(spec["subset_seed"]))
    x_uint8, y = x_all[idx.to(dev)], y_all[idx.to(dev)]
    with fp32(dev):
        res, arrays = EVALUATORS[suite](model, D.to_float(x_uint8), y, x_uint8, {**spec, "_idx": idx})
    res = {"suite": suite, "n": int(len(y)), "eval_precision": EVAL_PRECISION, **res}
    save_npz(out_npz, idx=idx.numpy(), y=y.cpu().numpy(),
             **{k: v.cpu().numpy().astype(bool) for k, v in arrays.items()})
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, model=[str(p) for p in model_paths])})
    return res
