"""Tables (CSV, Markdown, LaTeX) and figures (PNG, PDF) built from result files only.

Every table puts the measured numbers next to the paper's. With several seeds a
cell shows mean ± std over seeds and the CSV adds n and a 95% t-interval.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from advss import protocol as P
from advss.io import AdvssError, atomic_path, read_json, write_text

# Two-sided 95% Student-t quantiles by degrees of freedom (1..30); normal beyond.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t95(dof: int) -> float:
    """Two-sided 95% t quantile: the table up to 30 degrees of freedom, beyond it the
    Cornish-Fisher expansion around the normal 1.96 (error < 1e-3 there)."""
    if dof < 1:
        return float("nan")
    if dof <= len(_T95):
        return _T95[dof - 1]
    z = 1.959964  # 97.5% normal quantile
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def aggregate(df: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, sample std, n and the half-width of the 95% t-interval of the mean of
    `values` over seeds, per group of `keys`; with one seed the spread columns are NaN."""
    rows = []
    for k, g in df.groupby(keys, sort=False):
        row = dict(zip(keys, k if isinstance(k, tuple) else (k,)))
        n = len(g)
        row["n_seeds"] = n
        for v in values:
            s = g[v].astype(float)
            half = t95(n - 1) * s.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
            row.update({v: s.mean(), f"{v}_std": s.std(ddof=1) if n > 1 else float("nan"), f"{v}_ci95": half})
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(mean, std=float("nan"), digits=2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if digits == 0 or (digits == 1 and float(mean).is_integer() and (std is None or math.isnan(std))):
        return str(int(round(mean)))
    s = f"{mean:.{digits}f}"
    return s if std is None or math.isnan(std) else f"{s} ± {std:.{digits}f}"


def seeds_phrase(n: int) -> str:
    return f"mean ± std over {n} seeds" if n > 1 else "one seed"


def result_columns(agg: pd.DataFrame) -> dict:
    """The display columns every results table shares: TA, RA, RA AutoAttack (where it
    ran), epochs to best, and the paper's values; from `aggregate`'s output."""
    cols = {"TA": [fmt(m, s) for m, s in zip(agg["ta"], agg["ta_std"])],
            "RA": [fmt(m, s) for m, s in zip(agg["ra"], agg["ra_std"])]}
    if "ra_aa" in agg and agg["ra_aa"].notna().any():
        cols["RA AutoAttack"] = [fmt(m, s) for m, s in zip(agg["ra_aa"], agg["ra_aa_std"])]
    if "epochs" in agg:
        cols["Epochs"] = [fmt(m, s, 1) for m, s in zip(agg["epochs"], agg["epochs_std"])]
    cols["Paper TA"] = [fmt(v) for v in agg["paper_ta"]]
    cols["Paper RA"] = [fmt(v) for v in agg["paper_ra"]]
    if "paper_epochs" in agg:
        cols["Paper Epochs"] = [fmt(v, digits=0) for v in agg["paper_epochs"]]
    return cols


def autoattack_note(display: pd.DataFrame, n_examples) -> str:
    if "RA AutoAttack" not in display:
        return ""
    return (f" RA AutoAttack: the authors' AutoAttack (pyautoattack: APGD-CE, APGD-T, FAB-T, Square) at the same ε "
            f"on {n_examples or 'all'} test images; its version and budget, and the in-house cross-check, in the "
            f"AutoAttack table.")


def drop_empty(agg: pd.DataFrame) -> pd.DataFrame:
    """Leave the AutoAttack columns out of the CSV where AutoAttack did not run."""
    if "ra_aa" in agg and agg["ra_aa"].isna().all():
        return agg.drop(columns=[c for c in agg.columns if c.startswith("ra_aa")])
    return agg


# -------------------------------------------------------------- writers
def _markdown(df: pd.DataFrame, caption: str) -> str:
    cols = [str(c) for c in df.columns]
    lines = [f"**{caption}**", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("–", "--"), ("→", r"$\to$"), ("ε", r"$\epsilon$"), ("α", r"$\alpha$"),
                 ("−", r"$-$"), ("·", r"$\cdot$"), ("ℓ", r"$\ell$"), ("≤", r"$\leq$"), ("≥", r"$\geq$"),
                 ("ᵀ", r"$^\top$"), ("†", r"\dag{}"), ("θ", r"$\theta$"), ("σ", r"$\sigma$")):
        s = s.replace(a, b)
    return s


def _latex(df: pd.DataFrame, caption: str, label: str) -> str:
    cols = [_latex_escape(str(c)) for c in df.columns]
    body = [" & ".join(_latex_escape(str(v)) for v in r) + r" \\" for r in df.itertuples(index=False)]
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
                      rf"\label{{tab:{label}}}", r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
                      " & ".join(cols) + r" \\", r"\midrule", *body, r"\bottomrule", r"\end{tabular}",
                      r"\end{table}"]) + "\n"


def _html(df: pd.DataFrame, caption: str) -> str:
    """A standalone page: Snakemake's HTML report shows .html results inline (a .csv only downloads)."""
    import html

    style = ("body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left} caption{text-align:left;padding:4px 0}")
    table = df.to_html(index=False, border=0).replace(
        "<thead>", f"<caption>{html.escape(caption)}</caption>\n  <thead>", 1)
    return f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><style>{style}</style></head><body>\n{table}\n</body></html>\n"


def write_table(display: pd.DataFrame, csv_df: pd.DataFrame, prefix, caption: str):
    """`display` (formatted strings) goes to .md, .tex and .html (for the report);
    `csv_df` (numbers) to .csv."""
    prefix = Path(prefix)
    with atomic_path(prefix.with_suffix(".csv")) as tmp:
        csv_df.to_csv(tmp, index=False)
    write_text(prefix.with_suffix(".md"), _markdown(display, caption))
    write_text(prefix.with_suffix(".tex"), _latex(display, caption, prefix.name))
    write_text(prefix.with_suffix(".html"), _html(display, caption))


def save_figure(fig, prefix):
    prefix = Path(prefix)
    for ext in ("png", "pdf"):
        with atomic_path(prefix.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")


# -------------------------------------------------------------- result access
def finetune_dir(run_dir, src, ft, seed) -> Path:
    return Path(run_dir) / "finetune" / src / ft / f"seed{seed}"


def finetune_result(run_dir, src, ft, seed) -> dict:
    d = finetune_dir(run_dir, src, ft, seed)
    from advss.robustness import autoattack_column

    test, meta = read_json(d / "test.json"), read_json(d / "meta.json")
    aa = autoattack_column(run_dir, src, ft, seed)  # eval/autoattack.json beside test.json, when run
    return {"ta": 100 * test["ta"], "ra": 100 * test["ra"], "ra_aa": float("nan") if aa is None else aa,
            "epochs": meta["epochs_to_best"], "epochs_run": meta["epochs_run"], "config_hash": meta["spec_hash"]}


# -------------------------------------------------------------- Table 3
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
               f"paper values (CIFAR-10, ResNet-50) beside. P1 rows are shared by the three tasks.{aa_note} "
               f"config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg


# -------------------------------------------------------------- Figure 1
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
    seeds = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    ax.set_title(f"Figure 1 ({spec['run']}): marker area ∝ epochs to best RA; {seeds}\nconfig {spec['config_hash']}",
                 fontsize=9)
    ax.legend(fontsize=7, loc="best", markerscale=0.4)
    ax.grid(alpha=0.3)
    save_figure(fig, prefix)
    plt.close(fig)


# name -> "module:function"; feature modules own their tables and figures, and
# importing only the one needed keeps each report job light.
REGISTRY = {
    "table3": "advss.report:table3",
    "figure1": "advss.report:figure1",
    # --- more tables and figures register here, one line each ---
    "table4": "advss.transfer:table4",
    "table5": "advss.ensemble:table5",
    "table6": "advss.ensemble_eval:table6",
    "figure5": "advss.transfer:figure5",
    "autoattack": "advss.robustness:autoattack_table",
    "unforeseen": "advss.robustness:unforeseen_table",
    "cifar10c": "advss.robustness:cifar10c_table",
    "figure3": "advss.robustness:figure3",
    "figure4": "advss.robustness:figure4",
    "table7": "advss.ablations:table7",
    "table8": "advss.ablations:table8",
    "table_rotaux": "advss.ablations:table_rotaux",
    "figure_pool": "advss.ablations:figure_pool",
    "claims": "advss.claims:table_claims",
}


def make(name: str, spec: dict, prefix):
    import importlib

    if name not in REGISTRY:
        raise AdvssError(f"unknown table or figure {name!r}; choose from {sorted(REGISTRY)}")
    module, fn = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), fn)(spec, prefix)
