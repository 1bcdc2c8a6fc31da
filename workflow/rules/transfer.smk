# Transfer attacks between the per-task fine-tuned models (Table 4, Figure 5) and
# ensembles of them with averaged softmax (Table 6). The `transfer` section turns it on.

include: "transfer_common.smk"  # config and helpers (a rule file holds rules only: --lint)


localrules:
    table4,
    table6,
    figure5,


# PGD crafted on one model, evaluated on every task's model of the scenario.
rule transfer:
    input:
        data=rules.prepare_data.output.data,
        source=rules.finetune.output.model,
        targets=transfer_targets,
    output:
        npz="results/{run}/transfer/{src}/{ft}/seed{seed}.npz",
        json="results/{run}/transfer/{src}/{ft}/seed{seed}.json",
    log:
        "results/{run}/logs/transfer/{src}/{ft}/seed{seed}.log",
    params:
        spec=transfer_spec,
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    conda:
        "../../environment.yml"
    message:
        "Transfer attacks from {wildcards.src}/{wildcards.ft} (seed {wildcards.seed})"
    shell:
        "python -m advss transfer --spec {params.spec:q} --data {input.data} --source {input.source}"
        " --targets {input.targets} --threads {threads} --out-npz {output.npz} --out-json {output.json} > {log} 2>&1"


# An ensemble of fine-tuned models (averaged softmax), clean and under white-box PGD.
rule ensemble_eval:
    input:
        data=rules.prepare_data.output.data,
        models=ensemble_members,
    output:
        json="results/{run}/ensembles/{members}/seed{seed}.json",
        npz="results/{run}/ensembles/{members}/seed{seed}.npz",
    log:
        "results/{run}/logs/ensembles/{members}/seed{seed}.log",
    wildcard_constraints:
        members=MEMBERS_RE,
    params:
        spec=ensemble_eval_spec,
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    conda:
        "../../environment.yml"
    message:
        "Ensemble {wildcards.members} (seed {wildcards.seed}): averaged softmax under PGD"
    shell:
        "python -m advss ensemble-eval --spec {params.spec:q} --data {input.data} --models {input.models}"
        " --threads {threads} --out-json {output.json} --out-npz {output.npz} > {log} 2>&1"


# Table 4: attack success rates between the scenario's models.
rule table4:
    input:
        transfer_results,
    output:
        csv=report(f"results/{RUN}/tables/table4.csv", category="Tables", labels={"table": "4"}),
        md=f"results/{RUN}/tables/table4.md",
        tex=f"results/{RUN}/tables/table4.tex",
    log:
        f"results/{RUN}/logs/report/table4.log",
    params:
        spec=transfer_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 4: transfer attack success rates"
    shell:
        "python -m advss table table4 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


# Table 6: ensembles of fine-tuned models, every pair and the triple.
rule table6:
    input:
        table6_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table6.csv", category="Tables", labels={"table": "6"}),
        md=f"results/{RUN}/tables/table6.md",
        tex=f"results/{RUN}/tables/table6.tex",
    log:
        f"results/{RUN}/logs/report/table6.log",
    params:
        spec=transfer_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 6: ensembles of fine-tuned models"
    shell:
        "python -m advss table table6 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


# Figure 5: Venn diagrams of which test images the transferred attacks fool.
rule figure5:
    input:
        transfer_results,
    output:
        png=report(f"results/{RUN}/figures/figure5.png", category="Figures", labels={"figure": "5"}),
        pdf=f"results/{RUN}/figures/figure5.pdf",
    log:
        f"results/{RUN}/logs/report/figure5.log",
    params:
        spec=transfer_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure 5: Venn diagrams of successful transfer attacks"
    shell:
        "python -m advss figure figure5 --spec {params.spec:q} --out {output.png} > {log} 2>&1"
