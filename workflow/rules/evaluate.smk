# Test TA and PGD RA of the selected checkpoint, with per-example vectors.
rule evaluate:
    input:
        data=rules.prepare_data.output.data,
        model=rules.finetune.output.model,
    output:
        test="results/{run}/finetune/{src}/{ft}/seed{seed}/test.json",
        npz="results/{run}/finetune/{src}/{ft}/seed{seed}/eval/pgd.npz",
    log:
        "results/{run}/logs/evaluate/{src}/{ft}/seed{seed}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    params:
        spec=evaluate_spec,
    message:
        "Evaluating {wildcards.src}/{wildcards.ft} (seed {wildcards.seed}) under PGD"
    shell:
        "python -m advss evaluate --spec {params.spec:q} --data {input.data} --model {input.model}"
        " --threads {threads} --out-json {output.test} --out-npz {output.npz} > {log} 2>&1"
