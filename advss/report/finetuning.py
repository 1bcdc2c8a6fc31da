"""Table 3 (every pretraining × fine-tuning scenario, per task, and the compute-matched
baseline) and Figure 1 (TA against RA, marker area ∝ epochs to best), from fine-tuning results."""
from __future__ import annotations

import statistics

import pandas as pd

from advss import protocol as P
from advss.io import AdvssError, read_json
from advss.results import ensemble_dir, finetune_dir, finetune_result, training_passes
from advss.tables import aggregate, autoattack_note, drop_empty, result_columns, save_figure, seeds_phrase, write_table


def table3_jobs(spec: dict) -> list[tuple]:
    """(scenario label, task, src, ft) of every row: the scenarios, with the matched
    baseline of each task (spec["matched"]) after the (P1,F4) rows, or last."""
    rows = [(f"({p},{f})", t, P.source_id(t, p), P.finetune_id(f)) for p, f in spec["scenarios"] for t in spec["tasks"]]
    # in the tasks' order, as the other rows (the spec's dict reaches here with sorted keys)
    matched = [(P.matched_label(spec["matched"][t]), t, "scratch", spec["matched"][t])
               for t in spec["tasks"] if t in spec.get("matched", {})]
    at = max((i + 1 for i, r in enumerate(rows) if r[0] == "(P1,F4)"), default=len(rows))
    return rows[:at] + matched + rows[at:]


def table3_frame(spec: dict) -> pd.DataFrame:
    return pd.DataFrame([{"scenario": label, "task": P.TASK_LABEL[t], "seed": seed,
                          **finetune_result(spec["run_dir"], src, ft, seed)}
                         for label, t, src, ft in table3_jobs(spec) for seed in spec["seeds"]])


def _mean_passes(spec, src, ft) -> float:
    return statistics.fmean(training_passes(spec["run_dir"], src, ft, s) for s in spec["seeds"])


def budget_note(spec: dict) -> str:
    """The budget rule and the pass counts of the F4 rows the matched baseline is about."""
    seen, counts = set(), []
    for label, t, src, ft in table3_jobs(spec):
        if label.startswith(("(P1,F4)", "(P3,F4)")) and (src, ft) not in seen:
            seen.add((src, ft))
            v = _mean_passes(spec, src, ft)
            counts += [f"{label}{'' if src == 'scratch' else ' ' + P.TASK_LABEL[t]} {v:g}"] if v == v else []
    if not counts:
        return ""
    matched = (" (P1,F4), N epochs: the compute-matched baseline, (P1,F4) trained for the pretraining's plus the "
               "fine-tuning's epochs with the milestones scaled by the same ratio, one job per distinct budget."
               if spec.get("matched") else "")
    return (f"{matched} Budget, in forward+backward passes per training image, pretraining included (PGD-K costs K "
            f"passes: ST 1 per image and epoch, Madry AT (F2, F4) K + 1, P3's clean + adversarial mean K + 2; "
            f"validation and test not counted; advss.protocol.passes_per_image): " + "; ".join(counts) + ".")


def partial_note(spec: dict) -> str:
    """What F1/F2 trained in each row (θf), read from the runs' meta.json: the head, plus the
    trunk blocks the pretraining did not transfer and the fine-tuning did not freeze."""
    said = {}
    for label, t, src, ft in table3_jobs(spec):
        if not ft.startswith("partial"):
            continue
        try:
            tr = read_json(finetune_dir(spec["run_dir"], src, ft, spec["seeds"][0]) / "meta.json")["transfer"]
        except (AdvssError, KeyError, TypeError):
            continue
        frozen = tuple(tr.get("frozen_prefixes", ()))
        blocks = sorted({k.split(".")[1] for k in tr.get("kept_at_init", []) if not k.startswith(frozen)})
        what = " and ".join(blocks) + " (not transferred: from random init) and the head" if blocks else "the head only"
        said.setdefault(what, []).append(f"{label} {P.TASK_LABEL[t]}")
    if not said:
        return ""
    return " F1/F2 trained (the rest frozen): " + "; ".join(f"{', '.join(r)}: {what}" for what, r in said.items()) + "."


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
               f"paper values (CIFAR-10, ResNet-50) beside. P1 rows are shared by the three tasks."
               f"{budget_note(spec)}{partial_note(spec)}{aa_note}")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


def figure1_points(spec: dict) -> pd.DataFrame:
    """Figure 1's points over seeds (label, marker, TA, RA, epochs to best RA): the (P1,F4)
    baseline, each task's (P3,F4), the matched baselines (one per budget), the extra points
    (the ensemble pretraining) and the paper's red star, the ensemble of the fine-tuned
    (P3,F4) models (spec["ensemble_star"]), whose epochs are its members' summed (the
    paper's 144 = 50 + 48 + 46)."""
    points = [("Baseline (P1,F4)", "scratch", "full-adv")]
    points += [(f"{P.TASK_LABEL[t]} (P3,F4)", P.pretrain_id(t, "P3"), "full-adv") for t in spec["tasks"]]
    points += [(f"Baseline {P.matched_label(ft)}, same budget", "scratch", ft)
               for ft in dict.fromkeys(spec.get("matched", {}).values())]
    points += [(label, src, "full-adv") for label, src in spec.get("extra_points", [])]
    rows = [{"label": label, "marker": "o", **finetune_result(spec["run_dir"], src, ft, s)}
            for label, src, ft in points for s in spec["seeds"]]
    star = spec.get("ensemble_star")
    if star:
        members = star.split("+")
        label = f"Ensemble fine-tune ({'+'.join(P.TASK_LABEL[t] for t in members)})"
        for s in spec["seeds"]:
            r = read_json(ensemble_dir(spec["run_dir"], members) / f"seed{s}.json")
            epochs = sum(finetune_result(spec["run_dir"], P.pretrain_id(t, "P3"), "full-adv", s)["epochs"]
                         for t in members)
            rows.append({"label": label, "marker": "*", "ta": 100 * r["ta"], "ra": 100 * r["ra"], "epochs": epochs})
    return aggregate(pd.DataFrame(rows), ["label", "marker"], ["ta", "ra", "epochs"])


def figure1(spec: dict, prefix):
    """TA against RA of `figure1_points`; marker area ∝ epochs to the best validation RA,
    as in the paper's Figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = figure1_points(spec)
    n = int(agg["n_seeds"].min())
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for r, color in zip(agg.itertuples(index=False), plt.cm.tab10.colors):
        color = "red" if r.marker == "*" else color  # the paper's red star
        if r.n_seeds > 1:  # error bars: ± one standard deviation over seeds, as the tables
            ax.errorbar(r.ra, r.ta, xerr=r.ra_std, yerr=r.ta_std, color=color, capsize=3, lw=1, zorder=1)
        ax.scatter(r.ra, r.ta, s=40 + 25 * r.epochs, color=color, marker=r.marker, alpha=0.75, edgecolor="k",
                   zorder=2, label=f"{r.label}: {r.epochs:.0f} ep")
    ax.set_xlabel("robust accuracy RA (%)")
    ax.set_ylabel("standard accuracy TA (%)")
    ax.set_title(f"Figure 1 ({spec['run']}): marker area ∝ epochs to best RA; {seeds_phrase(n)}\nconfig {spec['config_hash']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best", markerscale=0.4)
    ax.grid(alpha=0.3)
    save_figure(fig, prefix)
    plt.close(fig)
