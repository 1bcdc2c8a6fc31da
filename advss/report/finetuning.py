"""Table 3 (every pretraining × fine-tuning scenario, per task) and Figure 1 (TA
against RA, marker area ∝ epochs to best), from fine-tuning results."""
from __future__ import annotations

import pandas as pd

from advss import protocol as P
from advss.results import finetune_result
from advss.tables import aggregate, autoattack_note, drop_empty, result_columns, save_figure, seeds_phrase, write_table


def table3_frame(spec: dict) -> pd.DataFrame:
    rows = []
    for p, f in spec["scenarios"]:
        for t in spec["tasks"]:
            for seed in spec["seeds"]:
                r = finetune_result(spec["run_dir"], P.source_id(t, p), P.finetune_id(f), seed)
                rows.append({"scenario": f"({p},{f})", "task": P.TASK_LABEL[t], "seed": seed, **r})
    return pd.DataFrame(rows)


def table3(spec: dict, prefix):
    per_seed = table3_frame(spec)
    agg = aggregate(per_seed, ["scenario", "task"], ["ta", "ra", "ra_aa", "epochs"])
    paper = [P.PAPER_TABLE3[t.lower()].get(s.strip("()").replace(",", ""), (None,) * 3)
             for s, t in zip(agg["scenario"], agg["task"])]
    agg["paper_ta"], agg["paper_ra"], agg["paper_epochs"] = zip(*paper)
    display = pd.DataFrame({"Scenario": agg["scenario"], "Task": agg["task"], **result_columns(agg)})
    n = int(agg["n_seeds"].min())
    if agg["n_seeds"].max() > 1:  # one seed keeps the single-seed table as it was
        display.insert(2, "n", agg["n_seeds"].astype(int))
    aa_note = autoattack_note(display, spec.get("autoattack_n"))
    agg = drop_empty(agg)
    caption = (f"Table 3 ({spec['run']}): test TA / RA (PGD-{spec['eval_steps']}, %) of the checkpoint with the best "
               f"validation RA (AT fine-tuning) or TA (ST fine-tuning), and the epoch it was reached, {seeds_phrase(n)}; "
               f"paper values (CIFAR-10, ResNet-50) beside. P1 rows are shared by the three tasks.{aa_note}")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


def figure1(spec: dict, prefix):
    """TA against RA of the (P3,F4) models and the (P1,F4) baseline; marker area ∝
    epochs to the best validation RA, as in the paper's Figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [("Baseline (P1,F4)", "scratch")] + [(f"{P.TASK_LABEL[t]} (P3,F4)", P.pretrain_id(t, "P3"))
                                                  for t in spec["tasks"]]
    points += [(label, src) for label, src in spec.get("extra_points", [])]
    per_seed = pd.DataFrame([{"label": label, **finetune_result(spec["run_dir"], src, "full-adv", s)}
                             for label, src in points for s in spec["seeds"]])
    agg = aggregate(per_seed, ["label"], ["ta", "ra", "epochs"])
    n = int(agg["n_seeds"].min())
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for r, color in zip(agg.itertuples(index=False), plt.cm.tab10.colors):
        if r.n_seeds > 1:  # error bars: ± one standard deviation over seeds, as the tables
            ax.errorbar(r.ra, r.ta, xerr=r.ra_std, yerr=r.ta_std, color=color, capsize=3, lw=1, zorder=1)
        ax.scatter(r.ra, r.ta, s=40 + 25 * r.epochs, color=color, alpha=0.75, edgecolor="k", zorder=2,
                   label=f"{r.label}: {r.epochs:.0f} ep")
    ax.set_xlabel("robust accuracy RA (%)")
    ax.set_ylabel("standard accuracy TA (%)")
    ax.set_title(f"Figure 1 ({spec['run']}): marker area ∝ epochs to best RA; {seeds_phrase(n)}\nconfig {spec['config_hash']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best", markerscale=0.4)
    ax.grid(alpha=0.3)
    save_figure(fig, prefix)
    plt.close(fig)
