# Tables and figures, from result files only.
rule table3:
    input:
        table3_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table3.csv", category="Tables", labels={"table": "3"}),
        md=f"results/{RUN}/tables/table3.md",
        tex=f"results/{RUN}/tables/table3.tex",
    log:
        f"results/{RUN}/logs/report/table3.log",
    params:
        spec=report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 3: the 8 scenarios × 3 pretext tasks"
    shell:
        "python -m advss table table3 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule figure1:
    input:
        figure1_inputs,
    output:
        png=report(f"results/{RUN}/figures/figure1.png", category="Figures", labels={"figure": "1"}),
        pdf=f"results/{RUN}/figures/figure1.pdf",
    log:
        f"results/{RUN}/logs/report/figure1.log",
    params:
        spec=report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure 1: TA vs RA, marker size = epochs to best"
    shell:
        "python -m advss figure figure1 --spec {params.spec:q} --out {output.png} > {log} 2>&1"
