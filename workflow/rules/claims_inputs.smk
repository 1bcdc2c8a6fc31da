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
    return inputs + successor_claim_inputs()
