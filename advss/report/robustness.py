"""AutoAttack, unforeseen-attack and CIFAR-10-C tables, and Figures 3–4, from the
robustness suites' result files (advss.robustness)."""
from __future__ import annotations

import pandas as pd

from advss import protocol as P
from advss.io import read_json
from advss.results import ensemble_path, eval_results
from advss.tables import aggregate, fmt, save_figure, write_table


def _wide(agg, index, column):
    """Pivot `acc` to one column per `column` value, rows and columns in order of first appearance."""
    wide = agg.pivot_table(index=index, columns=column, values="acc")
    rows = list(dict.fromkeys(zip(*(agg[k] for k in index))))
    return wide.loc[rows, list(dict.fromkeys(agg[column]))]


def _mean_over_seeds(rows, keys, values):
    return aggregate(pd.DataFrame(rows), keys, values)


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
    rows = [_aa_row(P.model_label(src, ft), seed, r)
            for src, ft, seed, r in eval_results(spec, spec["autoattack_jobs"], "autoattack")]
    rows += [_aa_row("Ensemble " + "+".join(P.TASK_LABEL[t] for t in sorted(members)), seed,
                     read_json(ensemble_path(spec["run_dir"], members, seed)))
             for members in spec.get("ensembles", []) for seed in spec["seeds"]]
    stages = [c for c in rows[0] if c.startswith("after_")]
    agg = _mean_over_seeds(rows, ["model"], ["ta", "ra_pgd", "ra_aa", "ra_aa_inhouse", *stages])
    k, n, budget, impl, version = (rows[0][c] for c in ("pgd_steps", "n", "budget", "implementation", "version"))
    columns = {"TA": "ta", f"RA PGD-{k}": "ra_pgd", "RA AutoAttack": "ra_aa", "RA in-house AA": "ra_aa_inhouse"}
    display = pd.DataFrame({"Model": agg["model"],
                            **{name: [fmt(m, s) for m, s in zip(agg[c], agg[f"{c}_std"])] for name, c in columns.items()},
                            **{f"after {c[6:]}": [fmt(v) for v in agg[c]] for c in stages}})
    attack = (f"AutoAttack ({impl}, the authors' code; version '{version}', L∞, ε = {spec['eps']}; "
              f"APGD-CE → APGD-T → FAB-T → Square; {budget}; the standard version: 100, 9, 100, 5000)")
    caption = (f"AutoAttack ({spec['run']}): accuracy (%) on the same {n} test images (seeded subset) clean, "
               f"under PGD-{k}, under {attack} and after each of its stages; 'RA in-house AA' is advss's own "
               "implementation on the same images as a cross-check (no FAB-T, so an upper bound; '–' where it did "
               "not run).")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


def unforeseen_table(spec: dict, prefix):
    """Accuracy under each unforeseen attack and ε, per model (the data of Figures 3–4)."""
    rows, n = [], set()
    for src, ft, seed, r in eval_results(spec, spec["unforeseen_jobs"], "unforeseen"):
        n.add(r["n"])
        rows.append({"model": P.model_label(src, ft), "attack": "clean", "eps": "", "seed": seed, "acc": 100 * r["ta"]})
        rows += [{"model": P.model_label(src, ft), "attack": a, "eps": e, "seed": seed, "acc": 100 * v}
                 for a, per in r["acc"].items() for e, v in per.items()]
    from advss.attacks.unforeseen import ATTACKS, label

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
               f"test images, ε in advex-uar units (Kang et al.'s CIFAR-10 calibration). {UNCALIBRATED_NOTE}")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


def per_attack_accuracy(spec, jobs):
    """{label: {attack: mean accuracy (%) over its ε and the seeds}} (clean under 'clean')."""
    from advss.attacks.unforeseen import ATTACKS

    out = {}
    for src, ft in jobs:
        runs = [r for _, _, _, r in eval_results(spec, [(src, ft)], "unforeseen")]
        acc = {"clean": 100 * sum(r["ta"] for r in runs) / len(runs)}
        for a in sorted(runs[0]["acc"], key=list(ATTACKS).index):
            vals = [v for r in runs for v in r["acc"][a].values()]
            acc[a] = 100 * sum(vals) / len(vals)
        out[P.model_label(src, ft)] = acc
    return out


def plot_unforeseen(accs: dict, title: str, prefix):
    """Radar (left) and grouped bars (right) of per-attack accuracy, as the paper."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np


    from advss.attacks.unforeseen import UNCALIBRATED, label

    attacks = [a for a in next(iter(accs.values())) if a != "clean"]
    names = [label(a) for a in attacks]  # uncalibrated attacks carry their mark on both panels
    fig = plt.figure(figsize=(11, 4.5))
    radar = fig.add_subplot(1, 2, 1, projection="polar")
    bars = fig.add_subplot(1, 2, 2)
    angles = np.linspace(0, 2 * np.pi, len(attacks), endpoint=False)
    width = 0.8 / len(accs)  # 0.8: groups of bars leave a gap between attacks
    for i, ((model, acc), color) in enumerate(zip(accs.items(), plt.cm.tab10.colors)):
        vals = [acc[a] for a in attacks]
        radar.plot(np.r_[angles, angles[:1]], vals + vals[:1], color=color, lw=1.5,
                   label=f"{model} (clean {acc['clean']:.1f})")
        radar.fill(np.r_[angles, angles[:1]], vals + vals[:1], color=color, alpha=0.1)
        bars.bar(np.arange(len(attacks)) + (i - (len(accs) - 1) / 2) * width, vals, width, color=color, label=model)
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
    jobs = [(P.pretrain_id("rotation", "P3"), P.finetune_id("F4")), P.ROTAUX]
    plot_unforeseen(per_attack_accuracy(spec, jobs),
                    f"Figure 3 ({spec['run']}): unforeseen attacks, (P3,F4)-Rotation vs one-shot AT + rotation "
                    f"auxiliary loss", prefix)


def figure4(spec: dict, prefix):
    """(P3,F4) for each pretext task."""
    jobs = [(P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in spec["tasks"]]
    plot_unforeseen(per_attack_accuracy(spec, jobs),
                    f"Figure 4 ({spec['run']}): unforeseen attacks, (P3,F4) per pretext task", prefix)


def cifar10c_table(spec: dict, prefix):
    """CIFAR-10-C accuracy per corruption and severity, and the mean, per model."""
    rows, sources = [], set()
    for src, ft, seed, r in eval_results(spec, spec["corruption_jobs"], "corruptions"):
        sources |= set(r["source"].values())
        base = {"model": P.model_label(src, ft), "seed": seed}
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
               f"(cifar10-c = the official files, generated = advss.corruptions).")
    return write_table(display, wide, prefix, caption, spec["config_hash"])
