# Ablations: Table 7 (AT pretraining on unlabeled pools of several sizes), Table 8
# (random-smoothing pretraining instead of AT) and the one-shot baseline (AT with an
# auxiliary rotation loss, Hendrycks et al. 2019). Each sub-section of `ablations` turns
# its part on. Also checks `data.imagefolder` (R-ImageNet), the dataset kind of this feature.

include: "ablations_common.smk"


# ------------------------------------------------------------------ rules
localrules:
    prepare_pool,
    table7,
    table8,
    table_rotaux,
    figure_pool,


# One unlabeled pretraining pool (Table 7): a seeded subset of the configured source.
rule prepare_pool:
    input:
        data=rules.prepare_data.output.data,
        source=pool_source,
    output:
        pool="results/{run}/data/pool-n{size}.pt",
    log:
        "results/{run}/logs/prepare_pool/n{size}.log",
    params:
        spec=pool_spec,
    wildcard_constraints:
        size=r"\d+",
    conda:
        "../../environment.yml"
    message:
        "Building the pretraining pool of {wildcards.size} images"
    shell:
        "python -m advss pool --spec {params.spec:q} --data {input.data} --size {wildcards.size}"
        " --out {output.pool} > {log} 2>&1"


# Ablated pretraining: AT on a pool (<task>-adv-n<size>) or Gaussian noise (<task>-smooth).
rule pretrain_ablation:
    input:
        data=ablation_data,
    output:
        model="results/{run}/pretrain/{abl}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/{abl}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/{abl}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/{abl}/seed{seed}.log",
    params:
        spec=ablation_pretrain_spec,
        resume="results/{run}/.resume/pretrain/{abl}/seed{seed}",
    wildcard_constraints:
        abl=P.ABLATION_PT_RE,
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
    conda:
        "../../environment.yml"
    message:
        "Pretraining {wildcards.abl} (seed {wildcards.seed})"
    shell:
        "python -m advss pretrain --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-metrics {output.metrics} --out-meta {output.meta}"
        " --resume-dir {params.resume} > {log} 2>&1"


rule table7:
    input:
        table7_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table7.csv", category="Tables", labels={"table": "7"}),
        md=f"results/{RUN}/tables/table7.md",
        tex=f"results/{RUN}/tables/table7.tex",
    log:
        f"results/{RUN}/logs/report/table7.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 7: pretraining-pool size"
    shell:
        "python -m advss table table7 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table8:
    input:
        table8_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table8.csv", category="Tables", labels={"table": "8"}),
        md=f"results/{RUN}/tables/table8.md",
        tex=f"results/{RUN}/tables/table8.tex",
    log:
        f"results/{RUN}/logs/report/table8.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 8: random-smoothing pretraining"
    shell:
        "python -m advss table table8 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table_rotaux:
    input:
        table_rotaux_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table_rotaux.csv", category="Tables", labels={"table": "one-shot baseline"}),
        md=f"results/{RUN}/tables/table_rotaux.md",
        tex=f"results/{RUN}/tables/table_rotaux.tex",
    log:
        f"results/{RUN}/logs/report/table_rotaux.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "The one-shot AT + rotation-auxiliary baseline beside (P1,F4) and (P3,F4)"
    shell:
        "python -m advss table table_rotaux --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule figure_pool:
    input:
        table7_inputs,
    output:
        png=report(f"results/{RUN}/figures/figure_pool.png", category="Figures", labels={"figure": "pool size"}),
        pdf=f"results/{RUN}/figures/figure_pool.pdf",
    log:
        f"results/{RUN}/logs/report/figure_pool.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure: TA and RA against pretraining-pool size (Table 7)"
    shell:
        "python -m advss figure figure_pool --spec {params.spec:q} --out {output.png} > {log} 2>&1"
