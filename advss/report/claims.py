"""The claims table (advss.claims decides each claim; this writes the table)."""
from __future__ import annotations

import math

import pandas as pd

from advss.claims import MCNEMAR, claims_frame
from advss.tables import fmt, write_table


def fmt_p(p) -> str:
    if p is None or math.isnan(p):
        return "–"
    return f"{p:.2g}" if p > 0 else "< 1e-300"  # 0.0: the exact p underflows a float


BUDGET = (" Budget A/B: the training compute of side A over side B's, in forward+backward passes per training "
          "image, pretraining included (PGD-K costs K passes: ST 1 per image and epoch, Madry AT K + 1, P3's clean + "
          "adversarial mean K + 2; evaluation not counted). (P1,F4, same total budget) is (P1,F4) trained for the "
          "pretraining's plus the fine-tuning's epochs, its milestones scaled: the paper compares fine-tuning epochs "
          "only. RA ≥ (P1,F4) RA at the same compute: each method's PGD RA against the cheapest rung of the (P1,F4) "
          "ladder (trained for several epoch counts, milestones scaled) with at least the method's passes per image, "
          "read from the runs' meta.json: a rung, not an interpolation, so the control is a trained model paired by "
          "seed and per example, never given less compute than the method (Budget A/B ≤ 1 says how much more it "
          "had); where the ladder stops below a method's budget the row reads 'no control at this compute'. "
          "Note: the models whose best validation epoch was their last (still improving): their epochs to "
          "best are lower bounds, so an epoch verdict they could overturn reads undecided (not converged).")


def table_claims(spec: dict, prefix):
    df = claims_frame(spec)
    one_seed = bool((df["test"] == MCNEMAR).any())
    display = pd.DataFrame({
        "Claim": df["claim"], "Compared": df["task"],
        "Difference": [fmt(m, s) for m, s in zip(df["diff_mean"], df["diff_std"])],
        "95% CI": ["–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(df["ci95_lo"], df["ci95_hi"])],
        "n": df["n_seeds"],
    })
    if one_seed:
        display["Test"] = ["–" if t == "none" else t for t in df["test"]]
        display["b / c"] = ["–" if math.isnan(b) else f"{int(b)} / {int(c)}"
                            for b, c in zip(df["mcnemar_b"], df["mcnemar_c"])]
        display["p"] = [fmt_p(p) for p in df["p_value"]]
    display["Verdict"] = df["verdict"]
    display["Paper difference"] = [fmt(v) for v in df["paper_diff"]]
    display["Budget A/B"] = ["–" if math.isnan(r) else f"{r:.2f}×" for r in df["budget_ratio"]]
    display["Note"] = df["note"]
    if one_seed:
        caption = (f"Claims of the paper tested on {spec['run']}, one seed: difference A − B of the two sides of each "
                   f"claim (RA or attack success rate in %, or epochs to best RA), from the per-example results of the "
                   f"two models on the same test images. Test: {MCNEMAR}: b = images only A gets right (or only A's "
                   f"attack succeeds on), c = the converse, p = the exact two-sided McNemar p-value (binomial on b, c), "
                   f"95% CI = the Bonett-Price adjusted-Wald interval for a difference of paired proportions (b + 1 "
                   f"and c + 1 of n + 2), which keeps its coverage for differences up to 25 points. Both condition on "
                   f"the two trained models and on one fixed test set, read as a sample of images: they account for "
                   f"the sampling of test images only, not for the variation between training seeds, which needs "
                   f"several seeds. A claim holds when p < 0.05 and the interval lies on the claimed side of 0, does "
                   f"not hold when p < 0.05 and it lies on the other side, and is undecided otherwise (and says so "
                   f"where only one of the two excludes 0); a claim that is not a per-example accuracy (epochs to "
                   f"best) stays undecided with one seed. No correction for testing the ~{len(df)} claims together: "
                   f"each row is at its own 5 % level. Paper difference from its CIFAR-10 ResNet-50 tables.")
    else:
        caption = (f"Claims of the paper tested on {spec['run']}: difference A − B of the two sides of each claim "
                   f"(RA in %, or epochs to best RA), paired by seed, mean ± std over n seeds with the 95% t-interval "
                   f"of its mean; a claim holds when the interval lies on the claimed side of 0, does not hold when it "
                   f"lies on the other side, and is undecided otherwise (or with one seed). The t-interval covers the "
                   f"variation between seeds only, on one fixed test set whose own sampling it leaves out; no "
                   f"correction for testing the ~{len(df)} claims together: each row is at its own 5 % level. Paper "
                   f"difference from its CIFAR-10 ResNet-50 tables.")
    return write_table(display, df, prefix, caption + BUDGET, spec["config_hash"])
