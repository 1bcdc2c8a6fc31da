# Robustness beyond PGD (config.robustness): AutoAttack, the unforeseen attacks of
# Kang et al. 2019 (Figures 3–4) and CIFAR-10-C, per fine-tuned model; their tables
# and figures. A missing section, or a part with `enabled: false`, adds nothing.
import re
import sys

from advss import robustness as R

if validate_section("robustness", "../schemas/robustness.schema.yaml"):
    ROBUSTNESS = config["robustness"]
else:
    ROBUSTNESS = {}


def robustness_part(name):
    """The config of one part (autoattack | unforeseen | corruptions), or None when off."""
    part = ROBUSTNESS.get(name) or {}
    return part if part.get("enabled") else None


AA = robustness_part("autoattack")
UF = robustness_part("unforeseen")
CC = robustness_part("corruptions")
# The one-shot rotation-auxiliary baseline of Figure 3 is a fine-tuning mode of its
# own (issue 4); Figure 3 is built once the model-id grammar knows it.
ROTAUX_KNOWN = re.fullmatch(P.FT_RE, R.ROTAUX[1]) is not None


def robustness_jobs(part):
    """(src, ft) of the fine-tuned models a part evaluates: its scenarios, or Table 3's."""
    scenarios = part.get("scenarios")
    return P.scenario_jobs([tuple(s) for s in scenarios], TASKS) if scenarios else FT_JOBS


def unforeseen_jobs():
    """(P3,F4) of every task (Figure 4) and, when known, the rotation-auxiliary baseline (Figure 3)."""
    jobs = [(P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in TASKS]
    return jobs + ([R.ROTAUX] if ROTAUX_KNOWN else [])


def robustness_spec(wildcards):
    """What affects one robustness job's result (its suite's settings, the model, the subset)."""
    suite = wildcards.get("suite", "autoattack")
    part = {k: v for k, v in ROBUSTNESS[suite].items() if k not in ("enabled", "scenarios", "ensembles", "n_examples")}
    spec = {
        **_common_spec(wildcards.seed),
        "subset_seed": ROBUSTNESS.get("seed", 0),
        "n_examples": ROBUSTNESS[suite].get("n_examples"),
        "batch_size": ROBUSTNESS.get("batch_size", 256),
        suite: part,
        "revision": {"robustness": R.REVISION, "pgd": P.REVISION["pgd"]},
    }
    if suite != "autoattack":
        spec.pop("threat")  # no L∞ ball in these suites: a threat change must not rerun them
    return _dump(spec)


def ensemble_models(wildcards):
    """The (P3,F4) models of an ensemble's members (Table 6)."""
    return [
        f"results/{RUN}/finetune/{P.pretrain_id(t, 'P3')}/{P.finetune_id('F4')}/seed{wildcards.seed}/model.pt"
        for t in wildcards.members.split("+")
    ]


def model_flags(wildcards, input):
    return " ".join(f"--model {m}" for m in input.models)


def robustness_runtime(wildcards, attempt):
    """Minutes: AutoAttack on 10,000 images of a robust ResNet-50 takes hours on one GPU."""
    heavy = config["model"]["arch"] == "resnet50" and wildcards.get("suite", "autoattack") != "corruptions"
    return (360 if heavy else 30) * attempt


def robustness_report_spec(wildcards=None):
    ensembles = AA.get("ensembles", []) if AA else []
    return _dump({
        **json.loads(report_spec()),
        "eps": str(config["threat"]["eps"]),
        "autoattack_jobs": robustness_jobs(AA) if AA else [],
        "ensembles": [sorted(m) for m in ensembles],
        "unforeseen_jobs": unforeseen_jobs() if UF else [],
        "corruption_jobs": robustness_jobs(CC) if CC else [],
    })


def autoattack_table_inputs(wildcards):
    spec = json.loads(robustness_report_spec())
    return finetune_results("eval/autoattack.json", [tuple(j) for j in spec["autoattack_jobs"]]) + [
        f"results/{RUN}/ensembles/{'+'.join(m)}/autoattack-seed{s}.json" for m in spec["ensembles"] for s in SEEDS
    ]


def unforeseen_inputs(wildcards):
    return finetune_results("eval/unforeseen.json", unforeseen_jobs())


def figure3_inputs(wildcards):
    return finetune_results("eval/unforeseen.json", [(P.pretrain_id("rotation", "P3"), P.finetune_id("F4")), R.ROTAUX])


def figure4_inputs(wildcards):
    return finetune_results("eval/unforeseen.json", unforeseen_jobs()[: len(TASKS)])


def cifar10c_inputs(wildcards):
    return finetune_results("eval/corruptions.json", robustness_jobs(CC))


TABLES += (["autoattack"] if AA else []) + (["unforeseen"] if UF else []) + (["cifar10c"] if CC else [])
FIGURES += (["figure3"] if UF and ROTAUX_KNOWN else []) + (["figure4"] if UF else [])
if UF and not ROTAUX_KNOWN:
    print(f"advss: Figure 3 is skipped: fine-tuning mode {R.ROTAUX[1]!r} (issue 4) is not in the "
          f"model-id grammar yet", file=sys.stderr)


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
        csv=report(f"results/{RUN}/tables/autoattack.csv", category="Tables", labels={"table": "AutoAttack"}),
        md=f"results/{RUN}/tables/autoattack.md",
        tex=f"results/{RUN}/tables/autoattack.tex",
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
        csv=report(f"results/{RUN}/tables/unforeseen.csv", category="Tables", labels={"table": "unforeseen"}),
        md=f"results/{RUN}/tables/unforeseen.md",
        tex=f"results/{RUN}/tables/unforeseen.tex",
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
        csv=report(f"results/{RUN}/tables/cifar10c.csv", category="Tables", labels={"table": "CIFAR-10-C"}),
        md=f"results/{RUN}/tables/cifar10c.md",
        tex=f"results/{RUN}/tables/cifar10c.tex",
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
        png=report(f"results/{RUN}/figures/figure3.png", category="Figures", labels={"figure": "3"}),
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
        png=report(f"results/{RUN}/figures/figure4.png", category="Figures", labels={"figure": "4"}),
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
