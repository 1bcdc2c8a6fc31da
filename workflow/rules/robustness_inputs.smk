# Robustness beyond PGD (config.robustness): AutoAttack, the unforeseen attacks of
# Kang et al. 2019 (Figures 3–4) and CIFAR-10-C, per fine-tuned model; their tables
# and figures. A missing section, or a part with `enabled: false`, adds nothing.
# Config and input helpers of rules/robustness.smk (functions only).
if validate_section("robustness", "robustness.schema.yaml"):
    ROBUSTNESS = config["robustness"]
else:
    ROBUSTNESS = {}


def robustness_part(name):
    """The config of one part (autoattack | unforeseen | corruptions), or None when off."""
    part = ROBUSTNESS.get(name) or {}
    return part if part.get("enabled") else None


AA = robustness_part("autoattack")
if AA:
    try:
        P.autoattack_settings(
            AA
        )  # 'standard' with a non-standard budget: refuse before any job
    except ValueError as e:
        raise WorkflowError(f"invalid config ({_config_files()}): {e}") from None
UF = robustness_part("unforeseen")
CC = robustness_part("corruptions")
# Figure 3 compares with the one-shot AT + rotation-auxiliary baseline, which exists
# only when the ablations section asks for it (ablations_inputs.smk specs it).
ROTAUX_ON = "baseline" in (config.get("ablations") or {})


def robustness_jobs(part):
    """(src, ft) of the fine-tuned models a part evaluates: its scenarios, or Table 3's."""
    scenarios = part.get("scenarios")
    return (
        P.scenario_jobs([tuple(s) for s in scenarios], TASKS) if scenarios else FT_JOBS
    )


def unforeseen_jobs():
    """(P3,F4) of every task (Figure 4) and, when known, the rotation-auxiliary baseline (Figure 3)."""
    jobs = [(P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in TASKS]
    return jobs + ([P.ROTAUX] if ROTAUX_ON else [])


def robustness_spec(wildcards):
    """What affects one robustness job's result (its suite's settings, the model, the subset)."""
    suite = wildcards.get("suite", "autoattack")
    part = {
        k: v
        for k, v in ROBUSTNESS[suite].items()
        if k not in ("enabled", "scenarios", "ensembles", "n_examples")
    }
    spec = {
        **_common_spec(wildcards.seed),
        "subset_seed": ROBUSTNESS.get("seed", 0),
        "n_examples": ROBUSTNESS[suite].get("n_examples"),
        "batch_size": ROBUSTNESS.get("batch_size", 256),
        suite: part,
        "revision": {"robustness": P.ROBUSTNESS_REVISION, "pgd": P.REVISION["pgd"]},
    }
    if (
        suite == "corruptions"
    ):  # a fix of the generated corruptions (advss/corruptions.py) reruns these only
        spec["revision"]["corruptions"] = P.REVISION["corruptions"]
    spec.pop(
        "fast", None
    )  # attacks run in fp32 always: the GPU fast-path settings do not apply
    if suite != "autoattack":
        spec.pop(
            "threat"
        )  # no L∞ ball in these suites: a threat change must not rerun them
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
    heavy = (
        config["model"]["arch"] == "resnet50"
        and wildcards.get("suite", "autoattack") != "corruptions"
    )
    return (360 if heavy else 30) * attempt


def robustness_report_spec(wildcards=None):
    ensembles = AA.get("ensembles", []) if AA else []
    return _dump(
        {
            **json.loads(report_spec()),
            "eps": str(config["threat"]["eps"]),
            "autoattack_jobs": robustness_jobs(AA) if AA else [],
            "ensembles": [sorted(m) for m in ensembles],
            "unforeseen_jobs": unforeseen_jobs() if UF else [],
            "corruption_jobs": robustness_jobs(CC) if CC else [],
        }
    )


def autoattack_table_inputs(wildcards):
    spec = json.loads(robustness_report_spec())
    return finetune_results(
        "eval/autoattack.json", [tuple(j) for j in spec["autoattack_jobs"]]
    ) + [
        f"results/{RUN}/ensembles/{'+'.join(m)}/autoattack-seed{s}.json"
        for m in spec["ensembles"]
        for s in SEEDS
    ]


def unforeseen_inputs(wildcards):
    return finetune_results("eval/unforeseen.json", unforeseen_jobs())


def figure3_inputs(wildcards):
    return finetune_results(
        "eval/unforeseen.json",
        [(P.pretrain_id("rotation", "P3"), P.finetune_id("F4")), P.ROTAUX],
    )


def figure4_inputs(wildcards):
    return finetune_results("eval/unforeseen.json", unforeseen_jobs()[: len(TASKS)])


def cifar10c_inputs(wildcards):
    return finetune_results("eval/corruptions.json", robustness_jobs(CC))
