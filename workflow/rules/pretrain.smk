# Self-supervised pretraining of one pretext task: P2 (std) or P3 (adv).
rule pretrain:
    input:
        data=rules.prepare_data.output.data,
    output:
        model="results/{run}/pretrain/{pt}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/{pt}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/{pt}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/{pt}/seed{seed}.log",
    params:
        spec=pretrain_spec,
        resume="results/{run}/.resume/pretrain/{pt}/seed{seed}",
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
    conda:
        "../../environment.yml"
    message:
        "Pretraining {wildcards.pt} (seed {wildcards.seed})"
    shell:
        "python -m advss pretrain --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-metrics {output.metrics} --out-meta {output.meta}"
        " --resume-dir {params.resume} > {log} 2>&1"
