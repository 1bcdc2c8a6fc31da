# Transfer attacks between the per-task fine-tuned models (Table 4, Figure 5) and ensembles
# of them with averaged softmax (Table 6); config and helpers: transfer_inputs.smk, tables
# and figure: report_inputs.smk's registry.


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
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    params:
        spec=transfer_spec,
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
        members=P.MEMBERS_RE,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=30,
    params:
        spec=ensemble_eval_spec,
    message:
        "Ensemble {wildcards.members} (seed {wildcards.seed}): averaged softmax under PGD"
    shell:
        "python -m advss ensemble-eval --spec {params.spec:q} --data {input.data} --models {input.models}"
        " --threads {threads} --out-json {output.json} --out-npz {output.npz} > {log} 2>&1"
