# Input helpers of rules/claims.smk (functions only).


def claims_inputs(wildcards):
    """Table 3's results, plus the tables of the transfer (Table 4) and ensemble (Table 6)
    features when they are on: a finished table means every result file it reads exists,
    so the claims never read a half-made set (they read the per-seed files by path)."""
    return table3_inputs(wildcards) + [
        f"results/{RUN}/tables/{t}.csv" for t in ("table4", "table6") if t in TABLES
    ]
