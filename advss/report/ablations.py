"""Table 7 (pretraining pools of several sizes) and its figure, Table 8 (random-smoothing
pretraining) and the one-shot baseline table, from fine-tuning results."""
from __future__ import annotations

import pandas as pd

from advss import protocol as P
from advss.results import finetune_result
from advss.tables import aggregate, fmt, save_figure, seeds_phrase, write_table


def pool_label(spec: dict) -> str:
    pc = spec["pool"]
    return {"train": "seeded subsets of the run's training split",
            "npy": f"seeded subsets of the unlabeled array {pc.get('path')}",
            "folder": f"seeded subsets of the image folder {pc.get('path')}"}[pc.get("source", "train")]


def _rows(spec, jobs):
    """Per-seed results of (labels..., src, ft) jobs."""
    return pd.DataFrame([{**labels, "seed": s, **finetune_result(spec["run_dir"], src, ft, s)}
                         for labels, src, ft in jobs for s in spec["seeds"]])


def _display(agg, keys: dict):
    cols = {label: agg[k] for label, k in keys.items()}
    cols.update({"TA": [fmt(m, s) for m, s in zip(agg["ta"], agg["ta_std"])],
                 "RA": [fmt(m, s) for m, s in zip(agg["ra"], agg["ra_std"])],
                 "Epochs": [fmt(m, s, 1) for m, s in zip(agg["epochs"], agg["epochs_std"])]})
    cols.update({"Paper TA": [fmt(v) for v in agg["paper_ta"]], "Paper RA": [fmt(v) for v in agg["paper_ra"]],
                 "Paper Epochs": [fmt(v, digits=0) for v in agg["paper_epochs"]]})
    return pd.DataFrame(cols)


FULL_POOL = "whole training split (Table 3's P3)"


def table7_frame(spec: dict):
    """Aggregated Table 7 measurements: one row per task × pool × F (size None = the
    Table 3 pretraining on the whole training split, when `include_full`)."""
    pc = spec["pool"]
    pools = [(f"{n:,} images", n, f"{{t}}-adv-n{n}") for n in pc["sizes"]]
    if pc.get("include_full"):
        pools.append((FULL_POOL, None, "{t}-adv"))
    jobs = [({"task": P.TASK_LABEL[t], "pool": label, "size": n, "f": f, "scenario": f"(P3,{f})"},
             src.format(t=t), P.finetune_id(f))
            for t in pc["tasks"] for label, n, src in pools for f in pc["finetune"]]
    return aggregate(_rows(spec, jobs).fillna({"size": -1}), ["task", "pool", "size", "f", "scenario"],
                     ["ta", "ra", "epochs"])


def table7(spec: dict, prefix):
    """TA/RA/epochs of (P3,F2) and (P3,F4) after AT pretraining on pools of each size;
    the paper's rows (other pools, see the caption) follow, in the paper columns."""
    pc = spec["pool"]
    agg = table7_frame(spec)
    paper = pd.DataFrame([{"task": "paper", "pool": f"paper: CIFAR-{k} (80M Tiny Images)", "f": f,
                           "scenario": f"(P3,{f})", "paper_ta": v[0], "paper_ra": v[1], "paper_epochs": v[2]}
                          for k, fs in P.PAPER_TABLE7.items() for f, v in fs.items() if f in pc["finetune"]])
    both = pd.concat([agg, paper], ignore_index=True)
    nan = float("nan")
    both = both.fillna({c: nan for c in ("ta", "ta_std", "ra", "ra_std", "epochs", "epochs_std")})
    caption = (f"Table 7 ({spec['run']}): adversarial (P3) pretraining on unlabeled pools of several sizes, then "
               f"partial (F2) or full (F4) AT fine-tuning on the labelled training split; test TA / RA "
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {seeds_phrase(int(agg['n_seeds'].min()))}. Pools: "
               f"{pool_label(spec)} (seed {pc.get('seed', 0)}; a smaller pool is a subset of a larger one). The "
               f"paper's pools (its rows, last) were CIFAR-30K/50K/150K drawn from 80 Million Tiny Images, which "
               f"has been withdrawn, so no pool here reproduces them.")
    write_table(_display(both, {"Task": "task", "Pretraining pool": "pool", "Scenario": "scenario"}), both,
                prefix, caption, spec["config_hash"])
    return agg


def table8(spec: dict, prefix):
    """TA/RA/epochs of F2/F4 after Gaussian-noise (random smoothing) pretraining."""
    sc = spec["smoothing"]
    jobs = [({"f": f, "scenario": f"(P-RS,{f})", "task": P.TASK_LABEL[t]}, f"{t}-smooth", P.finetune_id(f))
            for f in sc["finetune"] for t in sc["tasks"]]
    agg = aggregate(_rows(spec, jobs), ["f", "scenario", "task"], ["ta", "ra", "epochs"])
    paper = [P.PAPER_TABLE8[f][t.lower()] for f, t in zip(agg["f"], agg["task"])]
    agg["paper_ta"], agg["paper_ra"], agg["paper_epochs"] = zip(*paper)
    caption = (f"Table 8 ({spec['run']}): pretraining on Gaussian-noised inputs (random smoothing, "
               f"σ = {sc['sigma']}) instead of AT, then partial (F2) or full (F4) AT fine-tuning; test TA / RA "
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {seeds_phrase(int(agg['n_seeds'].min()))}; paper values "
               f"(CIFAR-10, ResNet-50) beside.")
    return write_table(_display(agg, {"Scenario": "scenario", "Task": "task"}), agg, prefix, caption,
                       spec["config_hash"])


def table_rotaux(spec: dict, prefix):
    """The one-shot baseline beside AT from scratch and (P3,F4)-Rotation."""
    jobs = [({"model": "One-shot AT + rotation auxiliary (Hendrycks et al. 2019)", "key": None},
             "scratch", P.BASELINE_FT)]
    jobs += [({"model": label, "key": key}, src, "full-adv") for label, key, src in spec["baseline"]["compare"]]
    agg = aggregate(_rows(spec, jobs), ["model"], ["ta", "ra", "epochs"])
    keys = {j[0]["model"]: j[0]["key"] for j in jobs}
    paper = [P.PAPER_TABLE3["rotation"].get(keys[m]) or (None,) * 3 for m in agg["model"]]
    agg["paper_ta"], agg["paper_ra"], agg["paper_epochs"] = zip(*paper)
    caption = (f"One-shot baseline ({spec['run']}): adversarial training with an auxiliary rotation-prediction "
               f"loss (weight {spec['baseline']['rot_weight']}) on the same backbone, the comparison of the paper's "
               f"Section 4.4, beside AT from scratch (P1,F4) and rotation-pretrained (P3,F4); test TA / RA "
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {seeds_phrase(int(agg['n_seeds'].min()))}; the paper "
               f"reports no TA/RA for the baseline (only Figures 3-4).")
    return write_table(_display(agg, {"Model": "model"}), agg, prefix, caption, spec["config_hash"])


def figure_pool(spec: dict, prefix):
    """Test TA and RA against pretraining-pool size (Table 7), one line per task × F."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    agg = table7_frame(spec)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharex=True)
    for ((task, f), g), color in zip(agg.groupby(["task", "f"], sort=False), plt.cm.tab10.colors):
        pools, full = g[g["size"] > 0].sort_values("size"), g[g["size"] < 0]
        for ax, m in zip(axes, ("ta", "ra")):
            ax.errorbar(pools["size"], pools[m], yerr=pools[f"{m}_std"].fillna(0), marker="o", capsize=3,
                        color=color, label=f"{task} (P3,{f})")
            for v in full[m]:  # the Table 3 pretraining on the whole training split
                ax.axhline(v, color=color, ls=":", lw=1)
    for ax, name in zip(axes, ("standard accuracy TA (%)", "robust accuracy RA (%)")):
        ax.set_xscale("log")
        ax.set_xlabel("pretraining pool size (images)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Table 7 ({spec['run']}): pretraining-pool size; pools: {pool_label(spec)}; "
                 "dotted: whole training split", fontsize=8)
    save_figure(fig, prefix)
    plt.close(fig)
