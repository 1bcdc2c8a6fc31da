# Fine-tuning on labels, F1–F4, from scratch (P1) or a pretrained trunk (P2/P3).
rule finetune:
    input:
        data=rules.prepare_data.output.data,
        init=finetune_init,
    output:
        model="results/{run}/finetune/{src}/{ft}/seed{seed}/model.pt",
        best_ta="results/{run}/finetune/{src}/{ft}/seed{seed}/best_ta.pt",
        metrics="results/{run}/finetune/{src}/{ft}/seed{seed}/metrics.csv",
        meta="results/{run}/finetune/{src}/{ft}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/finetune/{src}/{ft}/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
    params:
        spec=finetune_spec,
        init=init_flag,
        resume="results/{run}/.resume/finetune/{src}/{ft}/seed{seed}",
    message:
        "Fine-tuning {wildcards.src} with {wildcards.ft} (seed {wildcards.seed})"
    shell:
        "python -m advss finetune --spec {params.spec:q} --data {input.data} {params.init} --threads {threads}"
        " --out-model {output.model} --out-best-ta {output.best_ta} --out-metrics {output.metrics}"
        " --out-meta {output.meta} --resume-dir {params.resume} > {log} 2>&1"
