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

The same module writes the tables and figures built from those files (REGISTRY of
advss.report): `autoattack`, `unforeseen`, `cifar10c`, `figure3`, `figure4`, and
`autoattack_column` for other tables' extra RA column.

Every test-set evaluation here runs in fp32 whatever the training precision (no
autocast, no TF32), and each result file records it as "eval_precision".
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from advss import protocol as P

SUITES = ("autoattack", "unforeseen", "corruptions")
REVISION = 2  # bump after a bug fix in this module: reruns exactly the robustness jobs
ROTAUX = ("scratch", P.BASELINE_FT)  # Hendrycks et al. 2019: one-shot AT + rotation auxiliary
SEED_STRIDE = 1000  # corruption noise seed = seed*STRIDE^2 + corruption*STRIDE + severity: distinct per cell
EVAL_PRECISION = "fp32"  # attacks and accuracies of every suite; recorded in each result file


# ------------------------------------------------------------------ CLI
def add_arguments(p):
    from advss.cli import common_args

    p.add_argument("suite", choices=SUITES)
    common_args(p)
    p.add_argument("--model", action="append", required=True,
                   help="fine-tuned checkpoint; repeat it to attack the softmax average of several")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)


def main(args):
    res = run(args.suite, args.spec, args.data, args.model, args.out_json, args.out_npz, args.device)
    print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}))


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
    import torch

    from advss.evaluate import load_classifier

    members = [load_classifier(p, model_cfg, num_classes, device)[0] for p in paths]
    if len(members) == 1:
        return members[0]

    class SoftmaxEnsemble(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x):
            probs = torch.stack([m(x).softmax(-1) for m in self.members]).mean(0)
            return probs.clamp_min(1e-12).log()  # 1e-12: log(0) would make the loss infinite

    return SoftmaxEnsemble().to(device).eval()


def _correct(model, x, y, batch_size):
    import torch

    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                          for i in range(0, len(x), batch_size)])


def _pgd_correct(model, x, y, threat, batch_size, seed):
    """Correctness under PGD on cross-entropy, model in eval mode (as `advss evaluate`)."""
    import torch
    import torch.nn.functional as F

    from advss.attacks import pgd
    from advss.io import batch_seed, generator

    out = []
    for b, i in enumerate(range(0, len(x), batch_size)):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        x_adv = pgd(lambda z: F.cross_entropy(model(z), yb, reduction="none"), xb, threat,
                    generator(batch_seed(seed, -1, b), x.device))
        out.append(_correct(model, x_adv, yb, batch_size))
    return torch.cat(out)


def autoattack_settings(aa: dict) -> dict:
    """version and budget of the `autoattack` config part, checked before any job runs
    (the smk calls it at parse time): 'standard' must keep the standard budget."""
    from advss.attacks.autoattack import STANDARD_BUDGET
    from advss.io import AdvssError

    version = aa.get("version", "standard")
    budget = {k: int(aa.get(k, v)) for k, v in STANDARD_BUDGET.items()}
    if version == "standard" and budget != STANDARD_BUDGET:
        raise AdvssError(f"robustness.autoattack: version 'standard' fixes {STANDARD_BUDGET}, got {budget}; "
                         "set version: custom for a smaller budget")
    if version not in ("standard", "custom"):
        raise AdvssError(f"robustness.autoattack.version must be standard or custom, not {version!r}")
    return {"version": version, **budget, "inhouse": bool(aa.get("inhouse", True))}


def eval_autoattack(model, x, y, x_uint8, spec):
    """pyautoattack's RA (the primary number), the in-house RA (cross-check) and PGD-k's."""
    from advss.attacks import Threat, parse_number
    from advss.attacks.autoattack import COMPONENTS, LEFT_OUT, autoattack, pyautoattack_eval
    from advss.io import AdvssError

    aa, threat = spec["autoattack"], spec["threat"]
    if threat.get("norm", "linf") != "linf":
        raise AdvssError(f"AutoAttack is implemented for L∞ only; threat.norm is {threat['norm']!r}")
    cfg = autoattack_settings(aa)
    budget = {k: cfg[k] for k in ("n_iter", "n_target_classes", "n_queries", "fab_n_iter")}
    eps, bs, seed = parse_number(threat["eps"]), int(spec.get("batch_size", 256)), int(spec["subset_seed"])
    primary = pyautoattack_eval(model, x, y, eps, version=cfg["version"], seed=seed, batch_size=bs, **budget)
    ref = Threat(norm="linf", eps=eps, step=parse_number(threat["step"]), steps=int(aa["pgd_steps"]),
                 random_start=bool(threat.get("random_start", True)))
    clean, pgd_ok = _correct(model, x, y, bs), _pgd_correct(model, x, y, ref, bs, seed)
    res = {"ta": clean.float().mean().item(), "ra": primary["robust"].float().mean().item(),
           "ra_pgd": pgd_ok.float().mean().item(), "pgd_steps": ref.steps, "eps": eps,
           "attack": f"autoattack-{cfg['version']}-linf", "implementation": primary["package"],
           "version": cfg["version"], "per_component": primary["per_component"], "components": primary["attacks"],
           "left_out": [], **budget}
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

    uf, bs, seed = spec["unforeseen"], int(spec.get("batch_size", 256)), int(spec["subset_seed"])
    clean = _correct(model, x, y, bs)
    acc, arrays = {}, {"correct_clean": clean}
    for name, eps_list in uf["attacks"].items():
        attack_step = (uf.get("step_sizes") or {}).get(name)  # None = the library's rule
        acc[name] = {}
        for eps in eps_list:
            attack = ATTACKS[name](eps, int(uf["n_iter"]), attack_step)
            ok = _correct(model, _batched(attack, model, x, y, bs, seed), y, bs)
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

    cc, bs = spec["corruptions"], int(spec.get("batch_size", 256))
    clean = _correct(model, x, y, bs)
    acc, source, arrays = {}, {}, {"correct_clean": clean}
    for c in cc.get("corruptions") or CORRUPTIONS:
        acc[c] = {}
        for s in cc.get("severities") or SEVERITIES:
            xc, source[c] = corrupted_images(x_uint8, y, spec["_idx"], c, s, cc.get("root"), int(spec["subset_seed"]))
            ok = _correct(model, D.to_float(xc), y, bs)
            acc[c][str(s)] = ok.float().mean().item()
            arrays[f"{c}@{s}"] = ok
    cells = [v for per in acc.values() for v in per.values()]
    return {"ta": clean.float().mean().item(), "acc": acc, "source": source,
            "mean": sum(cells) / len(cells)}, arrays


@contextlib.contextmanager
def fp32(dev):
    """Full fp32 for the evaluation, whatever the caller set: autocast off (bf16 training
    must not leak into the test-set numbers) and TF32 off for CUDA matmuls and convs."""
    import torch

    cuda = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.autocast(device_type=getattr(dev, "type", str(dev)), enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = cuda


EVALUATORS = {"autoattack": eval_autoattack, "unforeseen": eval_unforeseen, "corruptions": eval_corruptions}


def run(suite, spec: dict, data_path, model_paths, out_json, out_npz, device="auto"):
    from advss import data as D
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


# ------------------------------------------------------------------ result access
def eval_path(run_dir, src, ft, seed, suite) -> Path:
    return Path(run_dir) / "finetune" / src / ft / f"seed{seed}" / "eval" / f"{suite}.json"


def ensemble_path(run_dir, members, seed) -> Path:
    return Path(run_dir) / "ensembles" / "+".join(sorted(members)) / f"autoattack-seed{seed}.json"


def autoattack_column(run_dir, src, ft, seed):
    """AutoAttack RA (%) of one fine-tuned model, or None where it was not run."""
    path = eval_path(run_dir, src, ft, seed, "autoattack")
    return 100 * json.loads(path.read_text())["ra"] if path.is_file() else None


def autoattack_ensemble_column(run_dir, members, seed):
    """AutoAttack RA (%) of a softmax-average ensemble (Table 6), or None."""
    path = ensemble_path(run_dir, members, seed)
    return 100 * json.loads(path.read_text())["ra"] if path.is_file() else None


def model_label(src: str, ft: str) -> str:
    """'(P3,F4) Rotation' from 'rotation-adv', 'full-adv'; other ids are shown as they are."""
    f = P.FT_TO_F.get(ft)
    if (src, ft) == ROTAUX:
        return "One-shot AT + rotation aux."
    if src == "scratch" and f:
        return f"(P1,{f})"
    try:
        task, mode = P.parse_pt(src)
    except ValueError:
        return f"{src}/{ft}"
    p = {v: k for k, v in P.PRETRAIN_MODES.items()}[mode]
    return f"({p},{f}) {P.TASK_LABEL[task]}" if f else f"{src}/{ft}"


def _results(spec, jobs, suite):
    from advss.io import read_json

    return [(src, ft, seed, read_json(eval_path(spec["run_dir"], src, ft, seed, suite)))
            for src, ft in jobs for seed in spec["seeds"]]


def _wide(agg, index, column):
    """Pivot `acc` to one column per `column` value, rows and columns in order of first appearance."""
    wide = agg.pivot_table(index=index, columns=column, values="acc")
    rows = list(dict.fromkeys(zip(*(agg[k] for k in index))))
    return wide.loc[rows, list(dict.fromkeys(agg[column]))]


def _mean_over_seeds(rows, keys, values):
    import pandas as pd

    from advss.report import aggregate

    return aggregate(pd.DataFrame(rows), keys, values)


# ------------------------------------------------------------------ tables
UNCALIBRATED_NOTE = ("† UNCALIBRATED: Fog, Gabor and Snow have no 32-px calibration (Kang et al. calibrated them "
                     "on 224-px ImageNet-100 only; their ε are used as they are), so their columns are not "
                     "comparable with the paper's and support no claim.")


def _aa_row(label, seed, r):
    stages = {f"after_{k}": 100 * v for k, v in r["per_component"].items() if k != "clean"}
    inhouse = 100 * r["ra_inhouse"] if "ra_inhouse" in r else float("nan")
    return {"model": label, "seed": seed, "ta": 100 * r["ta"], "ra_pgd": 100 * r["ra_pgd"], "ra_aa": 100 * r["ra"],
            "ra_aa_inhouse": inhouse, **stages, "n": r["n"], "pgd_steps": r["pgd_steps"],
            "implementation": r.get("implementation", "advss in-house (before pyautoattack)"),
            "version": r.get("version", "?"),
            "budget": f"{r.get('n_iter', '?')} APGD iterations, {r.get('n_target_classes', '?')} APGD-T/FAB-T targets, "
                      f"{r.get('fab_n_iter', '?')} FAB-T iterations, {r.get('n_queries', '?')} Square queries"}


def autoattack_table(spec: dict, prefix):
    """Clean / PGD-k / AutoAttack (pyautoattack, and the in-house cross-check) accuracy on
    the same test subset, per model."""
    import pandas as pd

    from advss.io import read_json
    from advss.report import fmt, write_table

    rows = [_aa_row(model_label(src, ft), seed, r)
            for src, ft, seed, r in _results(spec, spec["autoattack_jobs"], "autoattack")]
    rows += [_aa_row("Ensemble " + "+".join(P.TASK_LABEL[t] for t in sorted(members)), seed,
                     read_json(ensemble_path(spec["run_dir"], members, seed)))
             for members in spec.get("ensembles", []) for seed in spec["seeds"]]
    stages = [c for c in rows[0] if c.startswith("after_")]
    agg = _mean_over_seeds(rows, ["model"], ["ta", "ra_pgd", "ra_aa", "ra_aa_inhouse", *stages])
    k, n, budget, impl, version = (rows[0][c] for c in ("pgd_steps", "n", "budget", "implementation", "version"))
    display = pd.DataFrame({"Model": agg["model"],
                            "TA": [fmt(m, s) for m, s in zip(agg["ta"], agg["ta_std"])],
                            f"RA PGD-{k}": [fmt(m, s) for m, s in zip(agg["ra_pgd"], agg["ra_pgd_std"])],
                            "RA AutoAttack": [fmt(m, s) for m, s in zip(agg["ra_aa"], agg["ra_aa_std"])],
                            "RA in-house AA": [fmt(m, s) for m, s in zip(agg["ra_aa_inhouse"], agg["ra_aa_inhouse_std"])],
                            **{f"after {c[6:]}": [fmt(v) for v in agg[c]] for c in stages}})
    caption = (f"AutoAttack ({spec['run']}): accuracy (%) on the same {n} test images (seeded subset) clean, "
               f"under PGD-{k}, under AutoAttack ({impl}, the authors' code; version '{version}', L∞, "
               f"ε = {spec['eps']}; APGD-CE → APGD-T → FAB-T → Square; {budget}; the standard version: 100, 9, "
               f"100, 5000) and after each of its stages; 'RA in-house AA' is advss's own implementation on the same "
               f"images as a cross-check (no FAB-T, so an upper bound; '–' where it did not run). "
               f"config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg


def unforeseen_table(spec: dict, prefix):
    """Accuracy under each unforeseen attack and ε, per model (the data of Figures 3–4)."""
    import pandas as pd

    from advss.report import fmt, write_table

    rows, n = [], set()
    for src, ft, seed, r in _results(spec, spec["unforeseen_jobs"], "unforeseen"):
        n.add(r["n"])
        rows.append({"model": model_label(src, ft), "attack": "clean", "eps": "", "seed": seed, "acc": 100 * r["ta"]})
        rows += [{"model": model_label(src, ft), "attack": a, "eps": e, "seed": seed, "acc": 100 * v}
                 for a, per in r["acc"].items() for e, v in per.items()]
    from advss.attacks.unforeseen import ATTACKS, UNCALIBRATED_MARK, label

    rank = {a: i for i, a in enumerate(["clean", *ATTACKS])}  # the suite's order (JSON keys come sorted)
    rows.sort(key=lambda r: (rank[r["attack"]], float(r["eps"] or 0)))
    for r in rows:
        r["attack"] = label(r["attack"])  # uncalibrated attacks carry their mark in every cell that names them
    agg = _mean_over_seeds(rows, ["attack", "eps", "model"], ["acc"])
    wide = _wide(agg, ["attack", "eps"], "model").reset_index()
    display = wide.copy()
    for c in wide.columns[2:]:
        display[c] = [fmt(v) for v in wide[c]]
    display.columns = ["Attack", "ε", *wide.columns[2:]]
    caption = (f"Unforeseen attacks ({spec['run']}, Kang et al. 2019): accuracy (%) on {'/'.join(map(str, sorted(n)))} "
               f"test images, ε in advex-uar units (Kang et al.'s CIFAR-10 calibration). {UNCALIBRATED_NOTE} "
               f"config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg


def cifar10c_table(spec: dict, prefix):
    """CIFAR-10-C accuracy per corruption and severity, and the mean, per model."""
    import pandas as pd

    from advss.report import fmt, write_table

    rows, sources = [], set()
    for src, ft, seed, r in _results(spec, spec["corruption_jobs"], "corruptions"):
        sources |= set(r["source"].values())
        base = {"model": model_label(src, ft), "seed": seed}
        for c, per in r["acc"].items():
            rows += [{**base, "corruption": c, "severity": s, "acc": 100 * v} for s, v in per.items()]
        rows.append({**base, "corruption": "clean", "severity": "0", "acc": 100 * r["ta"]})
    from advss.corruptions import CORRUPTIONS

    rank = {c: i for i, c in enumerate(["clean", *CORRUPTIONS])}  # Hendrycks' order (JSON keys come sorted)
    rows.sort(key=lambda r: rank[r["corruption"]])  # stable: models keep their order
    agg = _mean_over_seeds(rows, ["model", "severity", "corruption"], ["acc"])
    wide = _wide(agg, ["model", "severity"], "corruption")
    corr = [c for c in wide.columns if c != "clean"]
    wide["mean"] = wide[corr].mean(axis=1)
    clean = wide["clean"].groupby(level=0, sort=False).max()  # one clean value per model (severity 0)
    wide = wide.drop(index="0", level=1).drop(columns="clean")
    overall = wide.groupby(level=0, sort=False).mean()  # mean over severities
    overall["severity"] = "mean"
    wide = pd.concat([wide.reset_index(), overall.reset_index()]).sort_values(["model", "severity"], kind="stable")
    wide.insert(2, "clean", wide["model"].map(clean))
    display = wide.copy()
    for c in ["clean", *corr, "mean"]:
        display[c] = [fmt(v) for v in wide[c]]
    display.columns = ["Model", "Severity", "Clean", *[c.replace("_", " ") for c in corr], "Mean"]
    caption = (f"CIFAR-10-C ({spec['run']}): accuracy (%) per corruption and severity and the mean over corruptions; "
               f"'mean' rows average the severities. Images: {' and '.join(sorted(sources))} "
               f"(cifar10-c = the official files, generated = advss.corruptions). config {spec['config_hash']}")
    write_table(display, wide, prefix, caption)
    return wide


# ------------------------------------------------------------------ figures
def per_attack_accuracy(spec, jobs):
    """{label: {attack: mean accuracy (%) over its ε and the seeds}} (clean under 'clean')."""
    from advss.attacks.unforeseen import ATTACKS

    out = {}
    for src, ft in jobs:
        runs = [r for _, _, _, r in _results(spec, [(src, ft)], "unforeseen")]
        acc = {"clean": 100 * sum(r["ta"] for r in runs) / len(runs)}
        for a in sorted(runs[0]["acc"], key=list(ATTACKS).index):
            vals = [v for r in runs for v in r["acc"][a].values()]
            acc[a] = 100 * sum(vals) / len(vals)
        out[model_label(src, ft)] = acc
    return out


def plot_unforeseen(accs: dict, title: str, prefix):
    """Radar (left) and grouped bars (right) of per-attack accuracy, as the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from advss.report import save_figure

    from advss.attacks.unforeseen import UNCALIBRATED, label

    attacks = [a for a in next(iter(accs.values())) if a != "clean"]
    names = [label(a) for a in attacks]  # uncalibrated attacks carry their mark on both panels
    fig = plt.figure(figsize=(11, 4.5))
    radar = fig.add_subplot(1, 2, 1, projection="polar")
    bars = fig.add_subplot(1, 2, 2)
    angles = np.linspace(0, 2 * np.pi, len(attacks), endpoint=False)
    width = 0.8 / len(accs)  # 0.8: groups of bars leave a gap between attacks
    for i, ((label, acc), color) in enumerate(zip(accs.items(), plt.cm.tab10.colors)):
        vals = [acc[a] for a in attacks]
        radar.plot(np.r_[angles, angles[:1]], vals + vals[:1], color=color, lw=1.5,
                   label=f"{label} (clean {acc['clean']:.1f})")
        radar.fill(np.r_[angles, angles[:1]], vals + vals[:1], color=color, alpha=0.1)
        bars.bar(np.arange(len(attacks)) + (i - (len(accs) - 1) / 2) * width, vals, width, color=color, label=label)
    radar.set_xticks(angles)
    radar.set_xticklabels(names, fontsize=7)
    radar.set_ylim(0, 100)
    radar.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08))  # below the radar, clear of the title
    bars.set_xticks(np.arange(len(attacks)))
    bars.set_xticklabels(names, rotation=45, ha="right", fontsize=7)
    for tick, a in zip(bars.get_xticklabels(), attacks):
        if a in UNCALIBRATED:
            tick.set_color("grey")
    bars.set_ylabel("accuracy (%), mean over the ε of each attack")
    bars.set_ylim(0, 100)
    bars.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    if UNCALIBRATED & set(attacks):
        fig.text(0.5, -0.02, UNCALIBRATED_NOTE, ha="center", va="top", fontsize=7, wrap=True)
    save_figure(fig, prefix)
    plt.close(fig)


def figure3(spec: dict, prefix):
    """(P3,F4)-Rotation against the one-shot rotation-auxiliary AT baseline."""
    jobs = [(P.pretrain_id("rotation", "P3"), P.finetune_id("F4")), ROTAUX]
    plot_unforeseen(per_attack_accuracy(spec, jobs),
                    f"Figure 3 ({spec['run']}): unforeseen attacks, (P3,F4)-Rotation vs one-shot AT + rotation "
                    f"auxiliary loss", prefix)


def figure4(spec: dict, prefix):
    """(P3,F4) for each pretext task."""
    jobs = [(P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in spec["tasks"]]
    plot_unforeseen(per_attack_accuracy(spec, jobs),
                    f"Figure 4 ({spec['run']}): unforeseen attacks, (P3,F4) per pretext task", prefix)
