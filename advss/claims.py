"""The claims table: each directional claim of the paper, tested on this run's results.

A claim compares two quantities A and B measured on the same seeds. Its difference
A − B is taken per seed (paired: a fine-tune of seed k starts from the pretraining
of seed k), and its 95% t-interval over seeds decides the verdict:
  holds          the interval lies on the claimed side of 0
  does not hold  the interval lies on the other side (or at 0, for a strict claim)
  undecided      the interval straddles 0, or there is one seed (no interval)
Claims whose result files are absent read "undecided (no results)", so the table
can be made for any config. Numbers come from result files only, read by path.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pandas as pd

from advss import protocol as P
from advss.io import AdvssError, read_json
from advss.report import finetune_result, fmt, t95, write_table

HOLDS, FAILS, UNDECIDED = "holds", "does not hold", "undecided"
# relation -> (holds if the interval is entirely ..., fails if entirely ...), as tests on (lo, hi)
RELATIONS = {
    ">": (lambda lo, hi: lo > 0, lambda lo, hi: hi <= 0),
    ">=": (lambda lo, hi: lo >= 0, lambda lo, hi: hi < 0),
    "<": (lambda lo, hi: hi < 0, lambda lo, hi: lo >= 0),
}


def paired_verdict(a: dict, b: dict, relation: str) -> dict:
    """Paired difference a[seed] − b[seed] over the seeds both have, and the verdict."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds]
    n = len(d)
    out = {"n_seeds": n, "diff_mean": float("nan"), "diff_std": float("nan"),
           "ci95_lo": float("nan"), "ci95_hi": float("nan")}
    if n == 0:
        return {**out, "verdict": f"{UNDECIDED} (no results)"}
    out["diff_mean"] = statistics.fmean(d)
    if n == 1:
        return {**out, "verdict": f"{UNDECIDED} (one seed)"}
    sd = statistics.stdev(d)
    half = t95(n - 1) * sd / math.sqrt(n)
    lo, hi = out["diff_mean"] - half, out["diff_mean"] + half
    holds, fails = RELATIONS[relation]
    verdict = HOLDS if holds(lo, hi) else FAILS if fails(lo, hi) else UNDECIDED
    return {**out, "diff_std": sd, "ci95_lo": lo, "ci95_hi": hi, "verdict": verdict}


# ------------------------------------------------------------- result readers
def _per_seed(spec, read) -> dict:
    """{seed: read(seed)} over the run's seeds whose result files exist."""
    out = {}
    for s in spec["seeds"]:
        try:
            out[s] = read(s)
        except (AdvssError, KeyError):  # missing file (or key): that seed has no result
            pass
    return out


def finetuned(spec, p, f, task, key) -> dict:
    """Per-seed TA/RA (%) or epochs to best of the (p, f) fine-tune of `task`."""
    src, ft = P.source_id(task, p), P.finetune_id(f)
    return _per_seed(spec, lambda s: finetune_result(spec["run_dir"], src, ft, s)[key])


def ensemble_ra(spec, members) -> dict:
    """Per-seed RA (%) of the ensemble of fine-tuned (P3,F4) models of `members`, from
    results/{run}/ensembles/{a+b+c}/seed{k}.json ({"ta", "ra"} as fractions, like test.json)."""
    d = Path(spec["run_dir"]) / "ensembles" / "+".join(sorted(members))
    return _per_seed(spec, lambda s: 100 * read_json(d / f"seed{s}.json")["ra"])


def transfer_asr(spec, source, target) -> dict:
    """Per-seed attack success rate (%) on the (P3,F4) model of `target` of PGD crafted on
    that of `source`, from the per-example success vectors of
    results/{run}/transfer/{source model}/full-adv/seed{k}.npz (ASR over all test images)."""
    from advss.transfer import transfer_npz

    src, tid = P.pretrain_id(source, "P3"), P.pretrain_id(target, "P3")

    def read(seed):
        z = transfer_npz(spec["run_dir"], src, "full-adv", seed)
        names = [str(t) for t in z["targets"]]
        if tid not in names:
            raise KeyError(tid)
        return 100 * float(z["success"][names.index(tid)].mean())

    return _per_seed(spec, read)


def _mean(values: dict) -> float:
    return statistics.fmean(values.values()) if values else float("-inf")


# ------------------------------------------------------------- the claims
def claims(spec) -> list[dict]:
    """Every claim as {claim, task, a, b, relation, paper_diff}, a/b = {seed: value}."""
    tasks, rows = spec["tasks"], []
    t3 = P.PAPER_TABLE3
    for t in tasks:
        lab = P.TASK_LABEL[t]
        rows.append({"claim": "(P3,F4) RA > (P1,F4) RA", "task": lab, "relation": ">",
                     "a": finetuned(spec, "P3", "F4", t, "ra"), "b": finetuned(spec, "P1", "F4", t, "ra"),
                     "paper_diff": t3[t]["P3F4"][1] - t3[t]["P1F4"][1]})
    for t in tasks:
        rows.append({"claim": "(P3,F4) needs fewer epochs to best RA than (P1,F4)", "task": P.TASK_LABEL[t],
                     "relation": "<", "a": finetuned(spec, "P3", "F4", t, "epochs"),
                     "b": finetuned(spec, "P1", "F4", t, "epochs"),
                     "paper_diff": t3[t]["P3F4"][2] - t3[t]["P1F4"][2]})
    for t in tasks:
        rows.append({"claim": "F4 ≥ F2: (P3,F4) RA ≥ (P3,F2) RA, every task", "task": P.TASK_LABEL[t],
                     "relation": ">=", "every_task": True, "a": finetuned(spec, "P3", "F4", t, "ra"),
                     "b": finetuned(spec, "P3", "F2", t, "ra"),
                     "paper_diff": t3[t]["P3F4"][1] - t3[t]["P3F2"][1]})
    if len(tasks) > 1:
        # the best single model is the member with the highest mean RA, as a table would name it
        singles = {t: finetuned(spec, "P3", "F4", t, "ra") for t in tasks}
        best = max(tasks, key=lambda t: _mean(singles[t]))
        members = "+".join(sorted(tasks))
        paper = P.PAPER_TABLE6.get(members)
        rows.append({"claim": f"the {len(tasks)}-model fine-tuned ensemble RA > the best single (P3,F4) RA",
                     "task": f"{'+'.join(P.TASK_LABEL[t] for t in sorted(tasks))} vs {P.TASK_LABEL[best]}",
                     "relation": ">", "a": ensemble_ra(spec, tasks), "b": singles[best],
                     "paper_diff": paper[1] - max(t3[t]["P3F4"][1] for t in tasks) if paper else None})
        for s in tasks:  # column s of Table 4: PGD crafted on model s, evaluated on every model
            col = {t: transfer_asr(spec, s, t) for t in tasks}
            rival = max((t for t in tasks if t != s), key=lambda t: _mean(col[t]))
            rows.append({"claim": "Table 4: the diagonal ASR dominates its column", "task":
                         f"attack from {P.TASK_LABEL[s]}: on {P.TASK_LABEL[s]} vs on {P.TASK_LABEL[rival]}",
                         "relation": ">", "a": col[s], "b": col[rival],
                         "paper_diff": P.PAPER_TABLE4[s][s] - max(P.PAPER_TABLE4[t][s] for t in tasks if t != s)})
    return rows


def every_task(verdicts: list[str]) -> str:
    """A claim made 'for every task' holds when it holds for each, fails when it fails for one."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNDECIDED


def claims_frame(spec) -> pd.DataFrame:
    rows, every = [], []
    for c in claims(spec):
        r = {"claim": c["claim"], "task": c["task"], "relation": c["relation"],
             **paired_verdict(c["a"], c["b"], c["relation"]), "paper_diff": c["paper_diff"]}
        rows.append(r)
        every += [r] if c.get("every_task") else []
    if len(every) > 1:  # the summary row: the weakest task's difference and the combined verdict
        weakest = min(every, key=lambda r: r["diff_mean"] if not math.isnan(r["diff_mean"]) else math.inf)
        rows.insert(rows.index(every[-1]) + 1, {**weakest, "task": "all tasks (weakest shown)",
                                                "verdict": every_task([r["verdict"] for r in every]),
                                                "paper_diff": min(r["paper_diff"] for r in every)})
    return pd.DataFrame(rows)


def table_claims(spec: dict, prefix):
    df = claims_frame(spec)
    display = pd.DataFrame({
        "Claim": df["claim"], "Compared": df["task"],
        "Difference": [fmt(m, s) for m, s in zip(df["diff_mean"], df["diff_std"])],
        "95% CI": ["–" if math.isnan(lo) else f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(df["ci95_lo"], df["ci95_hi"])],
        "n": df["n_seeds"], "Verdict": df["verdict"],
        "Paper difference": [fmt(v) for v in df["paper_diff"]],
    })
    caption = (f"Claims of the paper tested on {spec['run']}: difference A − B of the two sides of each claim "
               f"(RA in %, or epochs to best RA), paired by seed, mean ± std over n seeds with the 95% t-interval "
               f"of its mean; a claim holds when the interval lies on the claimed side of 0, does not hold when it "
               f"lies on the other side, and is undecided otherwise (or with one seed). Paper difference from its "
               f"CIFAR-10 ResNet-50 tables. config {spec['config_hash']}")
    write_table(display, df, prefix, caption)
    return df
