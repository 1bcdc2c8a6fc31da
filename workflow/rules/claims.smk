# The claims table: each directional claim of the paper with its measured difference,
# 95% interval over seeds and verdict, from result files only (with one seed: McNemar
# tests on the per-example results, test-sampling uncertainty only).
TABLES += ["claims"]


include: "claims_inputs.smk"  # input helpers (a rule file holds rules only: --lint)


localrules:
    claims,


rule claims:
    input:
        claims_inputs,
    output:
        csv=f"results/{RUN}/tables/claims.csv",
        md=f"results/{RUN}/tables/claims.md",
        tex=f"results/{RUN}/tables/claims.tex",
        html=report(
            f"results/{RUN}/tables/claims.html",
            caption="../report/claims.rst",
            category="0 Claims of the paper (a summary of the sections below)",
            labels={"result": "Claims"},
        ),
    log:
        f"results/{RUN}/logs/report/claims.log",
    params:
        spec=report_spec,
    conda:
        "../../environment.yml"
    message:
        "Claims: each directional claim of the paper, with its interval over seeds (McNemar with one seed)"
    shell:
        "python -m advss table claims --spec {params.spec:q} --out {output.csv} > {log} 2>&1"
