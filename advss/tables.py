"""What every table and figure shares: aggregation over seeds (mean, std, 95% t-interval),
cell formatting, and the writers of tables (CSV, Markdown, LaTeX, HTML) and figures
(PNG, PDF). The builders themselves are in advss.report.

Every table puts the measured numbers next to the paper's. With several seeds a
cell shows mean ± std over seeds and the CSV adds n and a 95% t-interval.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from advss.io import atomic_path, write_text

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


# The CSV keeps the decimals its table shows: `fmt`'s two, except the columns below (a
# column's _std, _ci95, _lo and _hi follow it). p-values keep every digit: they span hundreds
# of orders of magnitude and the claims are decided on them.
CSV_DECIMALS = {"pretrain_hours": 3}
CSV_EXACT = {"p_value"}


def csv_decimals(column: str) -> int | None:
    """The decimals of a CSV column (None: not rounded)."""
    base = str(column)
    for suffix in ("_std", "_ci95", "_lo", "_hi"):
        base = base.removesuffix(suffix)
    return None if base in CSV_EXACT else CSV_DECIMALS.get(base, 2)


def rounded(df: pd.DataFrame) -> pd.DataFrame:
    """The float columns rounded to the decimals the table shows, so that the CSV says 29.0
    where a float32 mean came out as 28.999999 (integer and text columns are left alone)."""
    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]) and csv_decimals(c) is not None:
            out[c] = out[c].round(csv_decimals(c))
    return out


def write_table(display: pd.DataFrame, csv_df: pd.DataFrame, prefix, caption: str, config_hash: str):
    """`display` (formatted strings) goes to .md, .tex and .html (for the report);
    `csv_df` (numbers, rounded as the table shows them) to .csv. Every caption ends with
    the hash of the config that made the results, so a table says which run it shows.
    Returns `csv_df` as written."""
    prefix = Path(prefix)
    caption = f"{caption} config {config_hash}"
    csv_df = rounded(csv_df)
    with atomic_path(prefix.with_suffix(".csv")) as tmp:
        csv_df.to_csv(tmp, index=False)
    write_text(prefix.with_suffix(".md"), _markdown(display, caption))
    write_text(prefix.with_suffix(".tex"), _latex(display, caption, prefix.name))
    write_text(prefix.with_suffix(".html"), _html(display, caption))
    return csv_df


def save_figure(fig, prefix):
    """PNG and PDF; the PDF carries no creation date, so the same results give the same bytes."""
    prefix = Path(prefix)
    for ext in ("png", "pdf"):
        with atomic_path(prefix.with_suffix(f".{ext}")) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight",
                        metadata={"CreationDate": None} if ext == "pdf" else None)
