# Robustness beyond PGD (config.robustness): AutoAttack, the unforeseen attacks of
# Kang et al. 2019 (Figures 3–4) and CIFAR-10-C, per fine-tuned model; their tables
# and figures. A missing section, or a part with `enabled: false`, adds nothing.


include: "robustness_inputs.smk"  # config and input helpers (a rule file holds rules only: --lint)


TABLES += (["autoattack"] if AA else []) + (["unforeseen"] if UF else []) + (["cifar10c"] if CC else [])
FIGURES += (["figure3"] if UF and ROTAUX_ON else []) + (["figure4"] if UF else [])
if UF and not ROTAUX_ON:
    print(f"advss: Figure 3 is skipped: it needs the one-shot rotation-auxiliary baseline, "
          f"which config section ablations.baseline turns on", file=sys.stderr)


localrules:
    table_autoattack,
    table_unforeseen,
    table_cifar10c,
    figure3,
    figure4,


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
        suite="|".join(R.SUITES),
    params:
        spec=robustness_spec,
    threads: 1
    resources:
        gpu=1,
        runtime=robustness_runtime,
    conda:
        "../../environment.yml"
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
        members=rf"({'|'.join(P.TASKS)})(\+({'|'.join(P.TASKS)}))+",
    params:
        spec=robustness_spec,
        models=model_flags,
    threads: 1
    resources:
        gpu=1,
        runtime=robustness_runtime,
    conda:
        "../../environment.yml"
    message:
        "AutoAttack on the ensemble {wildcards.members} (seed {wildcards.seed})"
    shell:
        "python -m advss robustness autoattack --spec {params.spec:q} --data {input.data} {params.models}"
        " --threads {threads} --out-json {output.json} --out-npz {output.npz} > {log} 2>&1"


rule table_autoattack:
    input:
        autoattack_table_inputs,
    output:
        csv=f"results/{RUN}/tables/autoattack.csv",
        md=f"results/{RUN}/tables/autoattack.md",
        tex=f"results/{RUN}/tables/autoattack.tex",
        html=report(
            f"results/{RUN}/tables/autoattack.html",
            caption="../report/autoattack.rst",
            category="3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
            labels={"result": "AutoAttack table"},
        ),
    log:
        f"results/{RUN}/logs/report/autoattack.log",
    params:
        spec=robustness_report_spec,
    conda:
        "../../environment.yml"
    message:
        "AutoAttack vs PGD on the same test images"
    shell:
        "python -m advss table autoattack --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table_unforeseen:
    input:
        unforeseen_inputs,
    output:
        csv=f"results/{RUN}/tables/unforeseen.csv",
        md=f"results/{RUN}/tables/unforeseen.md",
        tex=f"results/{RUN}/tables/unforeseen.tex",
        html=report(
            f"results/{RUN}/tables/unforeseen.html",
            caption="../report/unforeseen.rst",
            category="3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
            labels={"result": "unforeseen table"},
        ),
    log:
        f"results/{RUN}/logs/report/unforeseen.log",
    params:
        spec=robustness_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Accuracy under the unforeseen attacks, per attack and ε"
    shell:
        "python -m advss table unforeseen --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table_cifar10c:
    input:
        cifar10c_inputs,
    output:
        csv=f"results/{RUN}/tables/cifar10c.csv",
        md=f"results/{RUN}/tables/cifar10c.md",
        tex=f"results/{RUN}/tables/cifar10c.tex",
        html=report(
            f"results/{RUN}/tables/cifar10c.html",
            caption="../report/cifar10c.rst",
            category="3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
            labels={"result": "CIFAR-10-C table"},
        ),
    log:
        f"results/{RUN}/logs/report/cifar10c.log",
    params:
        spec=robustness_report_spec,
    conda:
        "../../environment.yml"
    message:
        "CIFAR-10-C accuracy per corruption and severity"
    shell:
        "python -m advss table cifar10c --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule figure3:
    input:
        figure3_inputs,
    output:
        png=report(
            f"results/{RUN}/figures/figure3.png",
            caption="../report/figure3.rst",
            category="3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
            labels={"result": "Figure 3"},
        ),
        pdf=f"results/{RUN}/figures/figure3.pdf",
    log:
        f"results/{RUN}/logs/report/figure3.log",
    params:
        spec=robustness_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure 3: unforeseen attacks, (P3,F4)-Rotation vs the rotation-auxiliary baseline"
    shell:
        "python -m advss figure figure3 --spec {params.spec:q} --out {output.png} > {log} 2>&1"


rule figure4:
    input:
        figure4_inputs,
    output:
        png=report(
            f"results/{RUN}/figures/figure4.png",
            caption="../report/figure4.rst",
            category="3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
            labels={"result": "Figure 4"},
        ),
        pdf=f"results/{RUN}/figures/figure4.pdf",
    log:
        f"results/{RUN}/logs/report/figure4.log",
    params:
        spec=robustness_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure 4: unforeseen attacks, (P3,F4) per pretext task"
    shell:
        "python -m advss figure figure4 --spec {params.spec:q} --out {output.png} > {log} 2>&1"
