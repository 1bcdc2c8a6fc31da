# Robustness beyond PGD: AutoAttack, unforeseen attacks or CIFAR-10-C per fine-tuned model,
# and AutoAttack on Table 6's ensembles (config and helpers: robustness_inputs.smk; the
# tables and figures: report_inputs.smk's registry).


# AutoAttack, unforeseen attacks or CIFAR-10-C on one fine-tuned model's test subset.
rule robustness:
    input:
        data=rules.prepare_data.output.data,
        model="results/{run}/finetune/{src}/{ft}/seed{seed}/model.pt",
    output:
        json="results/{run}/finetune/{src}/{ft}/seed{seed}/eval/{suite}.json",
        npz="results/{run}/finetune/{src}/{ft}/seed{seed}/eval/{suite}.npz",
    log:
        "results/{run}/logs/robustness/{src}/{ft}/seed{seed}/{suite}.log",
    wildcard_constraints:
        suite="|".join(P.ROBUSTNESS_SUITES),
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=robustness_runtime,
    params:
        spec=robustness_spec,
    message:
        "Robustness ({wildcards.suite}) of {wildcards.src}/{wildcards.ft} (seed {wildcards.seed})"
    shell:
        "python -m advss robustness {wildcards.suite} --spec {params.spec:q} --data {input.data}"
        " --model {input.model} --threads {threads} --out-json {output.json} --out-npz {output.npz} > {log} 2>&1"


# AutoAttack on the softmax average of (P3,F4) models (Table 6's ensembles).
rule autoattack_ensemble:
    input:
        data=rules.prepare_data.output.data,
        models=ensemble_models,
    output:
        json="results/{run}/ensembles/{members}/autoattack-seed{seed}.json",
        npz="results/{run}/ensembles/{members}/autoattack-seed{seed}.npz",
    log:
        "results/{run}/logs/autoattack_ensemble/{members}/seed{seed}.log",
    wildcard_constraints:
        members=P.AA_MEMBERS_RE,
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        gpu=1,
        runtime=robustness_runtime,
    params:
        spec=robustness_spec,
        models=model_flags,
    message:
        "AutoAttack on the ensemble {wildcards.members} (seed {wildcards.seed})"
    shell:
        "python -m advss robustness autoattack --spec {params.spec:q} --data {input.data} {params.models}"
        " --threads {threads} --out-json {output.json} --out-npz {output.npz} > {log} 2>&1"
