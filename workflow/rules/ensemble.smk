# Ensemble adversarial pretraining (paper eq. 2–4): AP+SE (α = 0) and AP+DPE (α > 0; +α·g as
# 'ensemble-dpe', −α·g as 'ensemble-dpe-neg') on one shared trunk, fine-tuned by the ordinary
# `finetune` rule (src = ensemble-<variant>, whose `finetune_init` finds the model below), and
# Table 5. The `ensemble` section turns it on; `ensemble.signs` picks the AP+DPE signs.

include: "ensemble_common.smk"  # config and helpers (a rule file holds rules only: --lint)


localrules:
    table5,


# Ensemble pretraining of the pretext tasks on one trunk (AP+SE, or AP+DPE with either sign).
rule pretrain_ensemble:
    input:
        data=rules.prepare_data.output.data,
    output:
        model="results/{run}/pretrain/ensemble-{variant}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/ensemble-{variant}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/ensemble-{variant}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/ensemble-{variant}/seed{seed}.log",
    wildcard_constraints:
        variant=P.ENSEMBLE_VARIANT_RE,
    params:
        spec=ensemble_pretrain_spec,
        resume="results/{run}/.resume/pretrain/ensemble-{variant}/seed{seed}",
    threads: 1
    resources:
        gpu=1,
        runtime=ensemble_runtime,
    conda:
        "../../environment.yml"
    message:
        "Ensemble pretraining ensemble-{wildcards.variant} (seed {wildcards.seed})"
    shell:
        "python -m advss pretrain --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-metrics {output.metrics} --out-meta {output.meta}"
        " --resume-dir {params.resume} > {log} 2>&1"


# Table 5: single-task (P3,F4) models next to AP+SE and AP+DPE (a row per sign) fine-tuned alike.
rule table5:
    input:
        table5_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table5.csv", category="Tables", labels={"table": "5"}),
        md=f"results/{RUN}/tables/table5.md",
        tex=f"results/{RUN}/tables/table5.tex",
    log:
        f"results/{RUN}/logs/report/table5.log",
    params:
        spec=ensemble_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 5: single-task vs ensemble adversarial pretraining (AP+SE, AP+DPE with each sign)"
    shell:
        "python -m advss table table5 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"
