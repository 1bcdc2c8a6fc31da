# Self-supervised pretraining, one rule for every pretrained-model id (P.PRETRAIN_RE):
# P2 (std) or P3 (adv) of one task, Table 5's ensemble-<variant> and the ablations'
# <task>-adv-n<size> (a pool) and <task>-smooth; `pretrain_spec` (common.smk) picks the spec.
rule pretrain:
    input:
        data=pretrain_data,
    output:
        model="results/{run}/pretrain/{pt}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/{pt}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/{pt}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/{pt}/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=pretrain_runtime,
    params:
        spec=pretrain_spec,
        resume="results/{run}/.resume/pretrain/{pt}/seed{seed}",
    message:
        "Pretraining {wildcards.pt} (seed {wildcards.seed})"
    shell:
        "python -m advss pretrain --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-metrics {output.metrics} --out-meta {output.meta}"
        " --resume-dir {params.resume} > {log} 2>&1"
