"""The claims table: each directional claim of the paper, tested on this run's results.

A claim compares two quantities A and B measured on the same seeds. Its difference
A − B is taken per seed (paired: a fine-tune of seed k starts from the pretraining
of seed k), and its 95% t-interval over seeds decides the verdict:
  holds          the interval lies on the claimed side of 0
  does not hold  the interval lies on the other side (or at 0, for a strict claim)
  undecided      the interval straddles 0
With one seed there is no interval over seeds. A claim between two classifiers' accuracies
(or attack success rates) on the same test images is then decided by the exact McNemar
test on their per-example vectors together with the Bonett-Price interval of the paired
difference (`mcnemar_verdict`): they measure test-sampling uncertainty only, not the
seed-to-seed variation of training. Other claims (epochs to best) stay undecided.
Claims whose result files are absent read "undecided (no results)", so the table
can be made for any config. Numbers come from result files only, read by path
(advss.results); advss.report.claims writes the table.
"""
from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd

from advss import protocol as P
from advss.io import AdvssError, load_npz, read_json
from advss.results import ensemble_dir, finetune_dir, finetune_result, training_passes, transfer_npz
from advss.tables import t95

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


# ------------------------------------------------------------- one seed: McNemar
MCNEMAR = "McNemar, test-sampling uncertainty only (1 seed)"
T_SEEDS = "t-interval over seeds"
SIDE = {">": 1, ">=": 1, "<": -1}  # the sign of A − B each relation claims


def mcnemar_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2·P(X ≤ min(b, c)), X ~ Binomial(b + c, ½), capped at 1.
    The tail is summed in integers (the binomial recurrence), so it is exact for any b + c
    and takes milliseconds at b + c = 10,000; the one division rounds correctly."""
    n, k = b + c, min(b, c)
    term = tail = 1
    for i in range(k):
        term = term * (n - i) // (i + 1)  # C(n, i + 1), exact
        tail += term
    return min(1.0, 2 * tail / 2**n)


def paired_interval(b, c, n, alpha: float = 0.05):
    """Bonett & Price (2012) adjusted-Wald interval for a difference of paired proportions,
    (b − c)/n, from the discordant counts b, c of n pairs: add one to each discordant count
    and two to n, then Wald. Unlike an interval conditional on b + c, it accounts for the
    randomness of b + c, and it keeps its coverage (≥ 94 % in simulation, tests/test_claims.py)
    from 0 to 25 points and for n = 1,000 and 10,000, with no image or all images discordant
    one way. Vectorised: b, c, n may be arrays."""
    z = statistics.NormalDist().inv_cdf(1 - alpha / 2)
    n2 = np.asarray(n, dtype=float) + 2
    p12, p21 = (np.asarray(b, dtype=float) + 1) / n2, (np.asarray(c, dtype=float) + 1) / n2
    d = p12 - p21
    half = z * np.sqrt((p12 + p21 - d * d) / n2)
    return np.clip(d - half, -1, 1), np.clip(d + half, -1, 1)


def mcnemar_verdict(hit_a, hit_b, relation: str, alpha: float = 0.05) -> dict:
    """Paired per-example test of a claim A `relation` B on one seed. hit_a, hit_b: boolean
    vectors (correct, or attack succeeded) of the two sides on the same test images, in the
    same order. b = images only A hits, c = images only B hits; A − B = (b − c)/n in %.
    The verdict needs the exact McNemar test and the interval to agree: the claim holds when
    p < alpha and the interval lies on the claimed side of 0, does not hold when p < alpha and
    it lies on the other side, and is undecided otherwise — "≥" included (a non-significant
    difference does not show A ≥ B), and where only one of the two excludes 0 (said in the
    verdict). So a verdict never contradicts the interval printed beside it."""
    a, bb = np.asarray(hit_a, dtype=bool), np.asarray(hit_b, dtype=bool)
    if a.shape != bb.shape or a.ndim != 1 or a.size == 0:
        raise AdvssError(f"McNemar needs two per-example vectors of one length, got {a.shape} and {bb.shape}")
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n, p = a.size, mcnemar_p(b, c)
    lo, hi = (float(v) for v in paired_interval(b, c, n, alpha))
    side = 1 if lo > 0 else -1 if hi < 0 else 0  # where the interval lies
    if (p < alpha) != (side != 0):
        verdict = f"{UNDECIDED} (McNemar p and the interval disagree)"
    else:
        verdict = UNDECIDED if side == 0 else HOLDS if side == SIDE[relation] else FAILS
    return {"n_seeds": 1, "diff_mean": 100 * (b - c) / n, "diff_std": float("nan"), "ci95_lo": 100 * lo,
            "ci95_hi": 100 * hi, "verdict": verdict, "test": MCNEMAR, "n_examples": n, "mcnemar_b": b,
            "mcnemar_c": c, "p_value": p}


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
    return model_values(spec, P.source_id(task, p), P.finetune_id(f), key)


def model_values(spec, src, ft, key) -> dict:
    """Per-seed TA/RA (%), epochs to best or epochs run of the fine-tuned model src/ft."""
    return _per_seed(spec, lambda s: finetune_result(spec["run_dir"], src, ft, s)[key])


def ensemble_ra(spec, members) -> dict:
    """Per-seed RA (%) of the ensemble of fine-tuned (P3,F4) models of `members`, from
    results/{run}/ensembles/{a+b+c}/seed{k}.json ({"ta", "ra"} as fractions, like test.json)."""
    d = ensemble_dir(spec["run_dir"], members)
    return _per_seed(spec, lambda s: 100 * read_json(d / f"seed{s}.json")["ra"])


# per-example readers for one seed: seed -> (test labels y, boolean hits), from the npz files
def finetuned_hits(spec, p, f, task):
    """Per-example PGD correctness of the (p, f) fine-tune of `task` (its eval/pgd.npz)."""
    return model_hits(spec, P.source_id(task, p), P.finetune_id(f))


def model_hits(spec, src, ft):
    """Per-example PGD correctness of the fine-tuned model src/ft."""

    def read(seed):
        z = load_npz(finetune_dir(spec["run_dir"], src, ft, seed) / "eval" / "pgd.npz")
        return z["y"], z["correct_adv"]

    return read


def ensemble_hits(spec, members):
    """Per-example PGD correctness of the ensemble of `members` (one classifier: the averaged
    softmax, attacked as a whole), from results/{run}/ensembles/{a+b+c}/seed{k}.npz."""
    d = ensemble_dir(spec["run_dir"], members)

    def read(seed):
        z = load_npz(d / f"seed{seed}.npz")
        return z["y"], z["correct_adv"]

    return read


def transfer_hits(spec, source, target):
    """Per-example success of PGD crafted on `source`'s (P3,F4) model, on `target`'s model."""
    src, tid = P.pretrain_id(source, "P3"), P.pretrain_id(target, "P3")

    def read(seed):
        z = transfer_npz(spec["run_dir"], src, "full-adv", seed)
        names = [str(t) for t in z["targets"]]
        if tid not in names:
            raise KeyError(tid)
        return z["y"], z["success"][names.index(tid)]

    return read


def one_seed_verdict(c: dict, seed) -> dict:
    """The McNemar test of claim `c` on `seed`, or the reason it stays undecided."""
    def undecided(why):
        return {"verdict": f"{UNDECIDED} (one seed; {why})", "test": "none"}

    if not callable(c.get("hits_a")):
        return undecided(c.get("no_paired_test", "no paired per-example test"))
    try:
        (ya, a), (yb, b) = c["hits_a"](seed), c["hits_b"](seed)
    except (AdvssError, KeyError):
        return undecided("no per-example results")
    if ya.shape != yb.shape or not np.array_equal(ya, yb):
        raise AdvssError(f"claim {c['claim']!r} ({c['task']}): the two sides' per-example results of seed {seed} "
                         f"are not on the same test images ({len(ya)} vs {len(yb)} labels, or a different order)")
    return mcnemar_verdict(a, b, c["relation"])


def transfer_asr(spec, source, target) -> dict:
    """Per-seed attack success rate (%) on the (P3,F4) model of `target` of PGD crafted on
    that of `source`, from the per-example success vectors of
    results/{run}/transfer/{source model}/full-adv/seed{k}.npz (ASR over all test images)."""
    hits = transfer_hits(spec, source, target)
    return _per_seed(spec, lambda s: 100 * float(hits(s)[1].mean()))


def _mean(values: dict) -> float:
    return statistics.fmean(values.values()) if values else float("-inf")


# ------------------------------------------------------------- the claims
def claims(spec) -> list[dict]:
    """Every claim as {claim, task, a, b, relation, paper_diff}, a/b = {seed: value}, with
    hits_a/hits_b (seed -> per-example vectors) where the two sides are two classifiers'
    accuracies or success rates on the same images, else no_paired_test (why not)."""
    tasks, rows = spec["tasks"], []
    t3 = P.PAPER_TABLE3
    p3f4, p1f4 = ({t: (P.source_id(t, p), "full-adv") for t in tasks} for p in ("P3", "P1"))
    for t in tasks:
        lab = P.TASK_LABEL[t]
        rows.append({"claim": "(P3,F4) RA > (P1,F4) RA", "task": lab, "relation": ">",
                     "a": finetuned(spec, "P3", "F4", t, "ra"), "b": finetuned(spec, "P1", "F4", t, "ra"),
                     "hits_a": finetuned_hits(spec, "P3", "F4", t), "hits_b": finetuned_hits(spec, "P1", "F4", t),
                     "models_a": [p3f4[t]], "models_b": [p1f4[t]],
                     "paper_diff": t3[t]["P3F4"][1] - t3[t]["P1F4"][1]})
        matched = spec.get("matched", {}).get(t)
        if matched:  # the same claim against (P1,F4) trained for the pretraining's + the fine-tuning's epochs
            rows.append({"claim": "(P3,F4) RA > (P1,F4, same total budget) RA", "task": lab, "relation": ">",
                         "a": finetuned(spec, "P3", "F4", t, "ra"), "b": model_values(spec, "scratch", matched, "ra"),
                         "hits_a": finetuned_hits(spec, "P3", "F4", t), "hits_b": model_hits(spec, "scratch", matched),
                         "models_a": [p3f4[t]], "models_b": [("scratch", matched)], "paper_diff": None})
    for t in tasks:
        rows.append({"claim": "(P3,F4) needs fewer epochs to best RA than (P1,F4)", "task": P.TASK_LABEL[t],
                     "relation": "<", "a": finetuned(spec, "P3", "F4", t, "epochs"),
                     "b": finetuned(spec, "P1", "F4", t, "epochs"), "censored": True,
                     "no_paired_test": "not a per-example accuracy", "models_a": [p3f4[t]], "models_b": [p1f4[t]],
                     "paper_diff": t3[t]["P3F4"][2] - t3[t]["P1F4"][2]})
    for t in tasks:
        rows.append({"claim": "F4 ≥ F2: (P3,F4) RA ≥ (P3,F2) RA, every task", "task": P.TASK_LABEL[t],
                     "relation": ">=", "every_task": True, "a": finetuned(spec, "P3", "F4", t, "ra"),
                     "b": finetuned(spec, "P3", "F2", t, "ra"),
                     "hits_a": finetuned_hits(spec, "P3", "F4", t), "hits_b": finetuned_hits(spec, "P3", "F2", t),
                     "models_a": [p3f4[t]], "models_b": [(P.source_id(t, "P3"), "partial-adv")],
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
                     "hits_a": ensemble_hits(spec, tasks), "hits_b": finetuned_hits(spec, "P3", "F4", best),
                     "models_a": [p3f4[t] for t in tasks], "models_b": [p3f4[best]],
                     "paper_diff": paper[1] - max(t3[t]["P3F4"][1] for t in tasks) if paper else None})
        for s in tasks:  # column s of Table 4: PGD crafted on model s, evaluated on every model
            col = {t: transfer_asr(spec, s, t) for t in tasks}
            rival = max((t for t in tasks if t != s), key=lambda t: _mean(col[t]))
            rows.append({"claim": "Table 4: the diagonal ASR dominates its column", "task":
                         f"attack from {P.TASK_LABEL[s]}: on {P.TASK_LABEL[s]} vs on {P.TASK_LABEL[rival]}",
                         "relation": ">", "a": col[s], "b": col[rival],
                         "hits_a": transfer_hits(spec, s, s), "hits_b": transfer_hits(spec, s, rival),
                         "models_a": [p3f4[s]], "models_b": [p3f4[rival]],
                         "paper_diff": P.PAPER_TABLE4[s][s] - max(P.PAPER_TABLE4[t][s] for t in tasks if t != s)})
    return rows + successor_claims(spec) + compute_claims(spec)


def autoattack_values(spec, src) -> dict:
    """Per-seed AutoAttack RA (%) of src's (P3,F4) model (its eval/autoattack.json), where it ran."""
    from advss.results import autoattack_column

    def read(s):
        v = autoattack_column(spec["run_dir"], src, "full-adv", s)
        if v is None:
            raise KeyError("autoattack")
        return v

    return _per_seed(spec, read)


def autoattack_hits(spec, src):
    """Per-example AutoAttack correctness of src's (P3,F4) model (eval/autoattack.npz; the
    suite attacks the same test subset for every model, so the two sides pair)."""
    def read(seed):
        z = load_npz(finetune_dir(spec["run_dir"], src, "full-adv", seed) / "eval" / "autoattack.npz")
        return z["y"], z["correct_adv"]

    return read


def successor_claims(spec) -> list[dict]:
    """Issue 20's row, where the successors ran (spec robust_ssl_methods): the best
    contrastive (P3,F4) AutoAttack RA ≥ the best 2020 pretext task's, each best by mean."""
    methods = [m for m in spec.get("robust_ssl_methods", []) if P.SUCCESSOR_P[m] == "P3"]
    if not methods or not spec["tasks"]:
        return []
    a = {m: autoattack_values(spec, m) for m in methods}
    b = {t: autoattack_values(spec, P.pretrain_id(t, "P3")) for t in spec["tasks"]}
    ma, tb = max(methods, key=lambda m: _mean(a[m])), max(spec["tasks"], key=lambda t: _mean(b[t]))
    return [{"claim": "the best contrastive (P3,F4) AutoAttack RA ≥ the best 2020 pretext task's",
             "task": f"{P.SUCCESSOR_LABEL[ma]} vs {P.TASK_LABEL[tb]}", "relation": ">=", "a": a[ma], "b": b[tb],
             "hits_a": autoattack_hits(spec, ma), "hits_b": autoattack_hits(spec, P.pretrain_id(tb, "P3")),
             # no paper difference: the published figures (table robust_ssl) are of other architectures
             "paper_diff": None}]


# ------------------------------------------------------------- the compute ladder
NO_CONTROL = "no control at this compute"


def compute_methods(spec) -> list[dict]:
    """Every trained method placed on the compute scale, as {label, models, ensemble}: each
    task's (P3,F4), the ensemble pretraining's F4 (Figure 1's extra point), the successors'
    AFF and the ensemble of the fine-tuned (P3,F4) models (its members' budgets summed)."""
    out = []
    if ["P3", "F4"] in [list(s) for s in spec["scenarios"]]:
        out += [{"label": f"(P3,F4) {P.TASK_LABEL[t]}", "models": [(P.pretrain_id(t, "P3"), "full-adv")]}
                for t in spec["tasks"]]
    out += [{"label": f"{label} (F4)", "models": [(src, "full-adv")]} for label, src in spec.get("extra_points", [])]
    if "F4" in spec.get("robust_ssl_finetune", ["F4"]):
        out += [{"label": f"{P.SUCCESSOR_LABEL[m]} ({P.SUCCESSOR_P[m]},AFF)", "models": [(m, "full-adv")]}
                for m in spec.get("robust_ssl_methods", [])]
    star = spec.get("ensemble_star")
    if star:
        members = star.split("+")
        out.append({"label": f"Ensemble of (P3,F4) {'+'.join(P.TASK_LABEL[t] for t in members)}",
                    "models": [(P.pretrain_id(t, "P3"), "full-adv") for t in members], "ensemble": star})
    return [{"ensemble": None, **m} for m in out]


def method_passes(spec, models) -> dict:
    """{seed: passes per training image} of a method (its models summed, pretraining included)."""
    return {s: sum(training_passes(spec["run_dir"], src, ft, s) for src, ft in models) for s in spec["seeds"]}


def method_values(spec, m, key) -> dict:
    """Per-seed TA, PGD RA or AutoAttack RA ('ta', 'ra', 'ra_aa'; %) of a compute method."""
    if not m["ensemble"]:
        return model_values(spec, *m["models"][0], key)
    if key != "ra_aa":
        return _per_seed(spec, lambda s: 100 * read_json(ensemble_dir(spec["run_dir"], m["ensemble"]) / f"seed{s}.json")[key])
    from advss.results import autoattack_ensemble_column

    return _per_seed(spec, lambda s: autoattack_ensemble_column(spec["run_dir"], m["ensemble"], s) or float("nan"))


def _mean_finite(values: dict) -> float:
    v = [x for x in values.values() if not math.isnan(x)]
    return statistics.fmean(v) if len(v) == len(values) and v else float("nan")


def ladder_budgets(spec) -> list[tuple[float, str]]:
    """(mean passes per training image over seeds, fine-tuning id) of each rung of the (P1,F4)
    ladder (spec["ladder"]), cheapest first: the budgets are passes from the runs' meta.json
    (their objective and the epochs they ran), not the epochs in their ids. Rungs whose
    meta.json is missing are left out."""
    rungs = [(_mean_finite(method_passes(spec, [("scratch", ft)])), ft) for ft in spec.get("ladder", [])]
    return sorted(r for r in rungs if not math.isnan(r[0]))


def control_rung(spec, passes: float):
    """(passes, ft) of the method's compute-matched control: the cheapest rung of the ladder
    with at least the method's passes per image; None where the ladder stops below them.
    Nearest at or above, not interpolation: the control is a trained model (paired by seed
    and per example, so the McNemar and t tests apply), it never has less compute than the
    method, and RA against compute is neither linear nor monotone (robust overfitting), so an
    interpolated RA would be no model's. The budget ratio beside each claim says how much
    more the rung had."""
    return next(((b, ft) for b, ft in ladder_budgets(spec) if b >= passes * (1 - 1e-9)), None)


def compute_claims(spec) -> list[dict]:
    """'X's RA ≥ (P1,F4) at the same compute' for every compute method, against its control
    rung; "no control at this compute" where the ladder stops below the method's budget."""
    if not spec.get("ladder"):
        return []
    rows, top = [], max((b for b, _ in ladder_budgets(spec)), default=float("nan"))
    for m in compute_methods(spec):
        a = method_values(spec, m, "ra")
        passes = _mean_finite(method_passes(spec, m["models"]))
        row = {"claim": "RA ≥ (P1,F4) RA at the same compute (passes per image)", "relation": ">=", "a": a,
               "models_a": m["models"], "paper_diff": None,
               "hits_a": ensemble_hits(spec, m["ensemble"].split("+")) if m["ensemble"] else model_hits(spec, *m["models"][0])}
        rung = control_rung(spec, passes) if not math.isnan(passes) else None
        if rung:
            ft = rung[1]
            rows.append({**row, "task": f"{m['label']} vs {P.model_label('scratch', ft)}",
                         "b": model_values(spec, "scratch", ft, "ra"), "hits_b": model_hits(spec, "scratch", ft),
                         "models_b": [("scratch", ft)]})
        elif a:  # results, but no rung at or above them
            why = (f"its budget is not on the pass scale" if math.isnan(passes) else
                   f"{passes:g} passes per image; the ladder tops at {top:g}")
            rows.append({**row, "task": m["label"], "b": {}, "models_b": [], "no_control": why})
        else:
            rows.append({**row, "task": m["label"], "b": {}, "models_b": []})
    return rows


# ------------------------------------------------------------- budgets and convergence
def budget_ratio(spec, c) -> float:
    """Training compute of side A over side B, in forward+backward passes per training image
    (advss.protocol.passes_per_image; a side's models summed, pretraining included; mean over
    seeds). NaN where a side's meta.json files are missing or record no spec."""
    def side(models):
        return statistics.fmean(sum(training_passes(spec["run_dir"], src, ft, s) for src, ft in models)
                                for s in spec["seeds"])

    return side(c["models_a"]) / side(c["models_b"]) if c.get("models_a") and c.get("models_b") else float("nan")


def unconverged(spec, models) -> list[str]:
    """'(P1,F4): best epoch = last in 3/3 seeds' for each model that was still improving. A model
    kept at its last epoch by design (select_by last, RobustSSL_Benchmark's rows) says nothing
    about convergence and is left out."""
    out = []
    for src, ft in dict.fromkeys(models):
        runs = _per_seed(spec, lambda s: finetune_result(spec["run_dir"], src, ft, s))
        runs = {s: r for s, r in runs.items() if r.get("select_by") != "last"}
        k = sum(r["epochs"] >= r["epochs_run"] for r in runs.values())
        out += [f"{P.model_label(src, ft)}: best epoch = last in {k}/{len(runs)} seeds"] if k else []
    return out


def convergence(spec, c, verdict: str) -> tuple[str, str]:
    """The verdict and its note, given the runs whose best epoch was their last. Their epochs
    to best are lower bounds (more epochs might have found a later best), so for the epoch
    claim a verdict that such a side could overturn becomes undecided: A < B cannot hold when
    A was censored, nor fail when B was. RA claims keep their verdict with the note."""
    a, b = unconverged(spec, c.get("models_a", [])), unconverged(spec, c.get("models_b", []))
    if not (a or b):
        return verdict, ""
    note = "not converged (" + "; ".join(dict.fromkeys(a + b)) + ")"  # a model on both sides is named once
    if not c.get("censored"):
        return verdict, note + ": more epochs could change the difference"
    voids = {HOLDS: a, FAILS: b} if c["relation"] == "<" else {HOLDS: b, FAILS: a}
    if verdict in (HOLDS, FAILS) and not voids[verdict]:
        return verdict, note + ": those epochs are lower bounds, which cannot overturn this verdict"
    return (f"{UNDECIDED} (not converged)" if verdict in (HOLDS, FAILS) else verdict,
            note + ": the epoch claim cannot be decided")


def every_task(verdicts: list[str]) -> str:
    """A claim made 'for every task' holds when it holds for each, fails when it fails for one."""
    if any(v == FAILS for v in verdicts):
        return FAILS
    return HOLDS if verdicts and all(v == HOLDS for v in verdicts) else UNDECIDED


PER_EXAMPLE = {"test": "none", "n_examples": float("nan"), "mcnemar_b": float("nan"),
               "mcnemar_c": float("nan"), "p_value": float("nan")}


def claims_frame(spec) -> pd.DataFrame:
    """One row per claim: the t-interval over seeds with several seeds, McNemar with one."""
    rows, every = [], []
    for c in claims(spec):
        v = {**paired_verdict(c["a"], c["b"], c["relation"]), **PER_EXAMPLE}
        if c.get("no_control"):  # the ladder stops below the method's budget: nothing to compare with
            rows.append({"claim": c["claim"], "task": c["task"], "relation": c["relation"], **v, "verdict": NO_CONTROL,
                         "note": c["no_control"], "budget_ratio": float("nan"), "paper_diff": None})
            continue
        if v["n_seeds"] > 1:
            v["test"] = T_SEEDS
        elif v["n_seeds"] == 1:
            v.update(one_seed_verdict(c, min(set(c["a"]) & set(c["b"]))))
        v["verdict"], v["note"] = convergence(spec, c, v["verdict"])
        v["budget_ratio"] = budget_ratio(spec, c)
        r = {"claim": c["claim"], "task": c["task"], "relation": c["relation"], **v, "paper_diff": c["paper_diff"]}
        rows.append(r)
        every += [r] if c.get("every_task") else []
    if len(every) > 1:  # the summary row: the weakest task's difference and the combined verdict
        weakest = min(every, key=lambda r: r["diff_mean"] if not math.isnan(r["diff_mean"]) else math.inf)
        rows.insert(rows.index(every[-1]) + 1, {**weakest, "task": "all tasks (weakest shown)",
                                                "verdict": every_task([r["verdict"] for r in every]),
                                                "paper_diff": min(r["paper_diff"] for r in every)})
    return pd.DataFrame(rows)


