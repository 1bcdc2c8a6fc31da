"""Robustness against training compute (issue 25, item 4), a view no peer gives: every trained
method's AutoAttack RA, PGD RA and TA against the forward+backward passes per training image
that made it, pretraining included (advss.protocol.passes_per_image × the epochs each job
ran, from meta.json), with the (P1,F4) ladder (AT from scratch at several budgets) as a line.
The methods and the controls are advss.claims's, so the table, the figure and the claims
table's "RA ≥ (P1,F4) at the same compute" rows read the same models."""
from __future__ import annotations

import math
import textwrap

import pandas as pd

from advss import claims as C
from advss import protocol as P
from advss.tables import aggregate, fmt, save_figure, seeds_phrase, write_table

VALUES = ("ra_aa", "ra", "ta")
PANEL = {"ra_aa": "AutoAttack RA (%)", "ra": "PGD RA (%)", "ta": "TA (%)"}


def compute_models(spec: dict) -> list[dict]:
    """The ladder's rungs (cheapest first), then the methods, as advss.claims.compute_methods
    entries with their kind."""
    ladder = [{"label": P.model_label("scratch", ft), "models": [("scratch", ft)], "ensemble": None, "kind": "ladder"}
              for ft in spec.get("ladder", [])]
    return ladder + [{**m, "kind": "method"} for m in C.compute_methods(spec)]


def compute_frame(spec: dict) -> pd.DataFrame:
    """One row per model and seed: passes per training image, TA, PGD RA and AutoAttack RA (%;
    NaN where AutoAttack did not run or the budget is off the pass scale)."""
    rows = []
    for m in compute_models(spec):
        passes = C.method_passes(spec, m["models"])
        values = {k: C.method_values(spec, m, k) for k in VALUES}
        for s in spec["seeds"]:
            if s not in values["ra"]:
                continue
            rows.append({"model": m["label"], "kind": m["kind"], "seed": s, "passes": passes[s],
                         **{k: float(values[k].get(s, math.nan)) for k in VALUES}})
    if not rows:
        raise ValueError("compute table: no model has results")
    return pd.DataFrame(rows)


def control_label(spec: dict, passes: float) -> str:
    """The compute-matched control of a method's mean budget (advss.claims.control_rung)."""
    if math.isnan(passes):
        return "– (not on the pass scale)"
    rung = C.control_rung(spec, passes)
    return P.model_label("scratch", rung[1]) + f" ({rung[0]:g})" if rung else C.NO_CONTROL


def compute_agg(spec: dict) -> pd.DataFrame:
    agg = aggregate(compute_frame(spec), ["model", "kind"], ["passes", *VALUES])
    agg["control"] = [control_label(spec, p) if k == "method" else "" for p, k in zip(agg["passes"], agg["kind"])]
    return agg


def table_compute(spec: dict, prefix):
    agg = compute_agg(spec)
    n = int(agg["n_seeds"].min())
    display = pd.DataFrame({
        "Model": agg["model"], "Passes per image": [fmt(p, digits=0) for p in agg["passes"]],
        **({"n": agg["n_seeds"].astype(int)} if agg["n_seeds"].max() > 1 else {}),
        **{PANEL[k].replace(" (%)", ""): [fmt(m, s) for m, s in zip(agg[k], agg[f"{k}_std"])] for k in VALUES},
        "Control at or above": agg["control"],
    })
    caption = (f"Robustness against training compute ({spec['run']}), {seeds_phrase(n)} (the CSV adds each mean's "
               f"95% t-interval over seeds, ci95: it covers the seed-to-seed variation on one fixed test set). Passes "
               f"per image: forward+backward passes per training image, pretraining included (PGD-K costs K passes: "
               f"ST 1 per image and epoch, Madry AT K + 1, P3's clean + adversarial mean K + 2, TRADES and ACL/DynACL "
               f"K + 2, the contrastive task's two views ×2, DynACL's momentum view only its attack's K; DynACL++ adds its "
               f"probe and its adversarial fine-tuning on pseudo-labels (its clustering is gradient-free); gradient-free forwards, validation and test not "
               f"counted; advss.protocol.passes_per_image), read from each run's meta.json; an ensemble of fine-tuned "
               f"models sums its members'; the ensemble pretraining's objective is not on this scale (–). The (P1,F4) "
               f"rows are the ladder: AT from scratch for several epoch counts, milestones scaled. Control at or "
               f"above: the cheapest rung with at least the method's passes, the claims table's control; "
               f"'{C.NO_CONTROL}' where the ladder stops below.")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


def figure_compute(spec: dict, prefix):
    """AutoAttack RA, PGD RA and TA (panels; a score no model has, such as AutoAttack where it did
    not run, gets none) against passes per image (log): one small point per seed, the mean with
    its 95% t-interval over seeds, the ladder as a line through its means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    per_seed, agg = compute_frame(spec), compute_agg(spec)
    agg = agg[agg["passes"].notna()]
    per_seed = per_seed[per_seed["passes"].notna()]
    keys = [k for k in VALUES if agg[k].notna().any()] or ["ra"]  # a score no model has gets no empty panel
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 4.2), sharex=True, squeeze=False)
    axes = axes[0]
    span = agg["passes"].max() / agg["passes"].min() if len(agg) else 1.0
    subs = tuple(range(1, 10)) if span < 20 else (1, 2, 5)  # a narrow range still gets labelled ticks
    colors = iter(plt.cm.tab10.colors[1:] * 3)
    style = {r.model: ("k", "s") if r.kind == "ladder" else (next(colors), "o") for r in agg.itertuples()}
    for ax, key in zip(axes, keys):
        ladder = agg[agg["kind"] == "ladder"].sort_values("passes")
        ax.plot(ladder["passes"], ladder[key], "-", color="k", lw=1, zorder=1,
                label="(P1,F4) ladder: " + ", ".join(f"{p:g}" for p in ladder["passes"]))
        for r in agg.itertuples(index=False):
            color, marker = style[r.model]
            pts = per_seed[per_seed["model"] == r.model]
            ax.scatter(pts["passes"], pts[key], s=12, color=color, marker=marker, alpha=0.4, zorder=2)
            err = getattr(r, f"{key}_ci95")
            ax.errorbar(r.passes, getattr(r, key), yerr=None if math.isnan(err) else err, color=color, marker=marker,
                        ms=7, mec="k", capsize=3, lw=1, zorder=3, label="_" if r.kind == "ladder" else r.model)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=subs))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_ylabel(PANEL[key] + ("" if agg[key].notna().any() else ": no results"))
        ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4, bbox_to_anchor=(0.5, -0.02))
    fig.supxlabel("forward+backward passes per training image (log scale), pretraining included", fontsize=9,
                  y=0.16)
    n = int(agg["n_seeds"].min()) if len(agg) else 0
    title = (f"Robustness against training compute ({spec['run']}): small points one per seed, large the mean "
             f"with its 95% t-interval over {n} seed{'s' if n != 1 else ''}; config {spec['config_hash']}")
    fig.suptitle(textwrap.fill(title, 60 * len(keys)), fontsize=9)
    fig.tight_layout(rect=(0, 0.15, 1, 0.95))
    save_figure(fig, prefix)
    plt.close(fig)
