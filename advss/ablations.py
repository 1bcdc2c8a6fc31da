"""Ablations: Table 7 (adversarial pretraining on unlabeled pools of several sizes),
Table 8 (random-smoothing pretraining instead of AT) and the one-shot baseline table
(AT + rotation auxiliary, Hendrycks et al. 2019, beside (P1,F4) and (P3,F4)-Rotation).

`python -m advss pool` writes a pool file with the keys of a dataset file, so the one
training loop pretrains on it unchanged: the pool's images are the `fit` split (labels
are dummies, the pretext tasks make their own), the run's validation images are its
`val` split (pretext validation stays comparable across pool sizes). Pools of one source
and seed are nested: a smaller pool is a prefix of a larger one's seeded order.

The paper's 30K/50K/150K pools came from 80 Million Tiny Images, which its authors have
withdrawn; a pool here is a seeded subset of the run's training split (`source: train`),
or of a user-supplied unlabeled set (`npy`: an N×H×W×3 uint8 array; `folder`: images,
resized with Pillow), and every Table 7 caption says which. Torch and pandas are imported
inside functions, so `python -m advss --help` stays fast.
"""
from __future__ import annotations

from pathlib import Path

POOL_SOURCES = ("train", "npy", "folder")


# ------------------------------------------------------------------ pools
def _source_images(cfg: dict, d: dict, h: int):
    """(an indexable N×3×h×h uint8 collection, N, a loader of chosen indices)."""
    import numpy as np
    import torch

    from advss.io import AdvssError

    source, path = cfg.get("source", "train"), cfg.get("path")
    if source == "train":
        x = d["train_x"][d["fit_idx"]]
        return len(x), lambda idx: x[idx]
    if not path or not Path(path).exists():
        raise AdvssError(f"ablations.pool.path {path!r} not found (needed by source {source!r})")
    if source == "npy":
        arr = np.load(path, mmap_mode="r")  # memory-mapped: only the chosen images are read
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1:3] != (h, h):
            raise AdvssError(f"{path}: expected an N×{h}×{h}×3 uint8 array, found {arr.shape} {arr.dtype}")
        return len(arr), lambda idx: torch.from_numpy(np.ascontiguousarray(arr[idx.numpy()])).permute(0, 3, 1, 2)
    if source == "folder":
        from advss.imagefolder import list_images, load_images

        files = list_images(path)
        return len(files), lambda idx: load_images([files[i] for i in idx.tolist()], h)
    raise AdvssError(f"unknown pool source {source!r}; choose from {POOL_SOURCES}")


def build_pool(cfg: dict, size: int, data_path, out_path):
    """Write a pool file of `size` unlabeled images (see the module docstring)."""
    import torch

    from advss.io import AdvssError, torch_load, torch_save

    d = torch_load(data_path, "dataset file")
    h = d["train_x"].shape[-1]
    n, take = _source_images(cfg, d, h)
    if size > n:
        raise AdvssError(f"pool size {size} is larger than the {n} images of source {cfg.get('source', 'train')!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.get("seed", 0))))
    pool = take(order[:size].sort().values)
    val_x = d["train_x"][d["val_idx"]]
    torch_save(out_path, {
        "name": f"pool-{cfg.get('source', 'train')}-n{size}",
        "train_x": torch.cat([pool, val_x]), "train_y": torch.zeros(size + len(val_x), dtype=torch.long),
        "test_x": d["test_x"], "test_y": d["test_y"],
        "fit_idx": torch.arange(size), "val_idx": torch.arange(size, size + len(val_x)),
        "num_classes": d["num_classes"], "pool": {"source": cfg.get("source", "train"), "size": size,
                                                  "path": cfg.get("path"), "seed": int(cfg.get("seed", 0))},
    })


def add_arguments(p):
    from advss.cli import common_args

    common_args(p)  # --spec: the ablations.pool section; --data: the run's dataset file
    p.add_argument("--size", type=int, required=True, help="number of pool images")
    p.add_argument("--out", required=True)


def main(args):
    """Build one pretraining pool file."""
    build_pool(args.spec, args.size, args.data, args.out)


# ------------------------------------------------------------------ tables
def pool_label(spec: dict) -> str:
    pc = spec["pool"]
    return {"train": "seeded subsets of the run's training split",
            "npy": f"seeded subsets of the unlabeled array {pc.get('path')}",
            "folder": f"seeded subsets of the image folder {pc.get('path')}"}[pc.get("source", "train")]


def _rows(spec, jobs):
    """Per-seed results of (labels..., src, ft) jobs."""
    import pandas as pd

    from advss.report import finetune_result

    return pd.DataFrame([{**labels, "seed": s, **finetune_result(spec["run_dir"], src, ft, s)}
                         for labels, src, ft in jobs for s in spec["seeds"]])


def _display(agg, keys: dict):
    import pandas as pd

    from advss.report import fmt

    cols = {label: agg[k] for label, k in keys.items()}
    cols.update({"TA": [fmt(m, s) for m, s in zip(agg["ta"], agg["ta_std"])],
                 "RA": [fmt(m, s) for m, s in zip(agg["ra"], agg["ra_std"])],
                 "Epochs": [fmt(m, s, 1) for m, s in zip(agg["epochs"], agg["epochs_std"])]})
    cols.update({"Paper TA": [fmt(v) for v in agg["paper_ta"]], "Paper RA": [fmt(v) for v in agg["paper_ra"]],
                 "Paper Epochs": [fmt(v, digits=0) for v in agg["paper_epochs"]]})
    return pd.DataFrame(cols)


def _seeds_note(agg) -> str:
    n = int(agg["n_seeds"].min())
    return f"mean ± std over {n} seeds" if n > 1 else "one seed"


FULL_POOL = "whole training split (Table 3's P3)"


def table7_frame(spec: dict):
    """Aggregated Table 7 measurements: one row per task × pool × F (size None = the
    Table 3 pretraining on the whole training split, when `include_full`)."""
    from advss import protocol as P
    from advss.report import aggregate

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
    import pandas as pd

    from advss import protocol as P
    from advss.report import write_table

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
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {_seeds_note(agg)}. Pools: "
               f"{pool_label(spec)} (seed {pc.get('seed', 0)}; a smaller pool is a subset of a larger one). The "
               f"paper's pools (its rows, last) were CIFAR-30K/50K/150K drawn from 80 Million Tiny Images, which "
               f"has been withdrawn, so no pool here reproduces them. config {spec['config_hash']}")
    write_table(_display(both, {"Task": "task", "Pretraining pool": "pool", "Scenario": "scenario"}), both,
                prefix, caption)
    return agg


def table8(spec: dict, prefix):
    """TA/RA/epochs of F2/F4 after Gaussian-noise (random smoothing) pretraining."""
    from advss import protocol as P
    from advss.report import aggregate, write_table

    sc = spec["smoothing"]
    jobs = [({"f": f, "scenario": f"(P-RS,{f})", "task": P.TASK_LABEL[t]}, f"{t}-smooth", P.finetune_id(f))
            for f in sc["finetune"] for t in sc["tasks"]]
    agg = aggregate(_rows(spec, jobs), ["f", "scenario", "task"], ["ta", "ra", "epochs"])
    paper = [P.PAPER_TABLE8[f][t.lower()] for f, t in zip(agg["f"], agg["task"])]
    agg["paper_ta"], agg["paper_ra"], agg["paper_epochs"] = zip(*paper)
    caption = (f"Table 8 ({spec['run']}): pretraining on Gaussian-noised inputs (random smoothing, "
               f"σ = {sc['sigma']}) instead of AT, then partial (F2) or full (F4) AT fine-tuning; test TA / RA "
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {_seeds_note(agg)}; paper values "
               f"(CIFAR-10, ResNet-50) beside. config {spec['config_hash']}")
    write_table(_display(agg, {"Scenario": "scenario", "Task": "task"}), agg, prefix, caption)
    return agg


def table_rotaux(spec: dict, prefix):
    """The one-shot baseline beside AT from scratch and (P3,F4)-Rotation."""
    from advss import protocol as P
    from advss.report import aggregate, write_table

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
               f"(PGD-{spec['eval_steps']}, %) and epoch of best validation RA, {_seeds_note(agg)}; the paper "
               f"reports no TA/RA for the baseline (only Figures 3-4). config {spec['config_hash']}")
    write_table(_display(agg, {"Model": "model"}), agg, prefix, caption)
    return agg


def figure_pool(spec: dict, prefix):
    """Test TA and RA against pretraining-pool size (Table 7), one line per task × F."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from advss.report import save_figure

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
