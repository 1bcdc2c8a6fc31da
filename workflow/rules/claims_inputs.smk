# The claims table's inputs (functions only); report_inputs.smk registers the table.


def claims_inputs(wildcards):
    """Table 3's results, plus the tables of the transfer (Table 4) and ensemble (Table 6)
    features when they are on: a finished table means every result file it reads exists,
    so the claims never read a half-made set (they read the per-seed files by path).
    With one seed the claims are decided by McNemar tests on per-example results, so the
    per-example files they read are inputs too: each fine-tune's eval/pgd.npz, the
    all-task ensemble's npz (Table 6) and the transfer npz files (Table 4)."""
    inputs = table3_inputs(wildcards) + [
        f"results/{RUN}/tables/{t}.csv" for t in ("table4", "table6") if t in TABLES
    ]
    if len(SEEDS) == 1:
        inputs += finetune_results("eval/pgd.npz")
        if "table6" in TABLES:
            inputs += [
                f"results/{RUN}/ensembles/{'+'.join(sorted(TASKS))}/seed{SEEDS[0]}.npz"
            ]
        if "table4" in TABLES:
            inputs += transfer_results(wildcards)
    return (
        inputs + successor_claim_inputs() + compute_inputs(per_example=len(SEEDS) == 1)
    )


def compute_jobs():
    """(src, ft) of every model the compute claims, table and figure read (advss.claims.
    compute_methods): the (P1,F4) ladder, each task's (P3,F4), the ensemble pretraining's F4,
    the successors' AFF (the ensemble of the (P3,F4) models reads its members'); none
    without a ladder."""
    if not LADDER:
        return []
    jobs = [("scratch", ft) for ft in LADDER]
    if ("P3", "F4") in SCENARIOS or FIGURE1_STAR:
        jobs += [(P.pretrain_id(t, "P3"), "full-adv") for t in TASKS]
    jobs += [(src, "full-adv") for _, src in FIGURE1_EXTRA]
    if RSSL and "F4" in RSSL["finetune"]:
        jobs += [(m, "full-adv") for m in RSSL["methods"]]
    return list(dict.fromkeys(jobs))


def compute_inputs(wildcards=None, per_example=False, autoattack=False):
    """Their results and meta.json (the budgets), the pretrainings' meta.json, the fine-tuned
    ensemble's results; the per-example PGD files (one-seed claims) or AutoAttack's (the
    compute table and figure) on request."""
    jobs = compute_jobs()
    if not jobs:
        return []
    star = f"results/{RUN}/ensembles/{FIGURE1_STAR}" if FIGURE1_STAR else None
    files = finetune_results("test.json", jobs) + finetune_results("meta.json", jobs)
    files += pretrain_metas(dict.fromkeys(src for src, _ in jobs if src != "scratch"))
    files += [f"{star}/seed{s}.json" for s in SEEDS] if star else []
    if per_example:
        files += finetune_results("eval/pgd.npz", jobs)
        files += [f"{star}/seed{s}.npz" for s in SEEDS] if star else []
    if autoattack and AA:
        # not the ensemble pretraining's: its budget is off the pass scale
        extra = [(src, "full-adv") for _, src in FIGURE1_EXTRA]
        files += finetune_results(
            "eval/autoattack.json", [j for j in jobs if j not in extra]
        )
        star_aa = star and sorted(FIGURE1_STAR.split("+")) in map(
            sorted, AA.get("ensembles", [])
        )
        files += [f"{star}/autoattack-seed{s}.json" for s in SEEDS] if star_aa else []
    return files


def compute_report_inputs(wildcards):
    """The compute table's and figure's: compute_inputs with AutoAttack's results."""
    return compute_inputs(autoattack=True)
