# Tables and figures, from result files only.
rule table3:
    input:
        table3_inputs,
    output:
        csv=f"results/{RUN}/tables/table3.csv",
        md=f"results/{RUN}/tables/table3.md",
        tex=f"results/{RUN}/tables/table3.tex",
        html=report(
            f"results/{RUN}/tables/table3.html",
            caption="../report/table3.rst",
            category="1 Pretraining × fine-tuning (Table 3, Figure 1)",
            labels={"result": "Table 3"},
        ),
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
        png=report(
            f"results/{RUN}/figures/figure1.png",
            caption="../report/figure1.rst",
            category="1 Pretraining × fine-tuning (Table 3, Figure 1)",
            labels={"result": "Figure 1"},
        ),
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
