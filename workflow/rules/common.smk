# Config loading, validation and the helpers every rule uses (functions only). At parse
# time the workflow imports only advss.protocol and advss.classmap (no torch, fast).
import json
import os
import tempfile
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from advss import protocol as P

min_version("8.0")
# This workflow's own folder, also when it runs as a module of another workflow (there
# `workflow.basedir` is the deploying workflow's folder): the schemas and captions live here.
WORKFLOW_DIR = Path(workflow.current_basedir).parent

# torch.compile's on-disk caches (inductor's FX-graph cache and AOTAutograd's) in one
# directory that every job of this workflow reuses: compilation is paid once per machine
# and software version, not once per job. Jobs inherit the variable (sbatch exports the
# submitting environment); set it yourself to share a cache between checkouts.
os.environ.setdefault(
    "TORCHINDUCTOR_CACHE_DIR", str(Path(".cache/torch-compile").resolve())
)


def _config_files():
    files = [
        str(f) for f in (workflow.overwrite_configfiles or workflow.configfiles or [])
    ]
    return ", ".join(files) or "the config"


def _fraction(v):
    if isinstance(v, str):
        a, b = v.split("/")
        return float(a) / float(b)
    return float(v)


def check_config(cfg):
    """Cross-key checks JSON Schema cannot express; each names the key."""
    problems = []
    t = cfg["threat"]
    if _fraction(t["step"]) > _fraction(t["eps"]):
        problems.append(
            f"threat.step ({t['step']}) is larger than threat.eps ({t['eps']})"
        )
    tasks = cfg["pretrain"]["tasks"]
    for key in ("batch_size", "optim") + (
        ("epochs",) if isinstance(cfg["pretrain"]["epochs"], dict) else ()
    ):
        missing = [x for x in tasks if x not in cfg["pretrain"][key]]
        if missing:
            problems.append(f"pretrain.{key} has no entry for task(s) {missing}")
    if cfg["data"]["name"] != "procedural" and not cfg["data"].get("root"):
        problems.append(f"data.root is required for data.name={cfg['data']['name']!r}")
    if cfg["data"]["name"] == "imagefolder":  # a bad class map fails here, not in a job
        from advss.classmap import read_class_map

        try:
            read_class_map(cfg["data"].get("imagefolder", {}).get("class_map", ""))
        except ValueError as e:
            problems.append(f"data.imagefolder.class_map: {e}")
    if (
        cfg["data"]["name"] == "procedural"
        and cfg["data"].get("procedural", {}).get("n_per_class", 0) < 1
    ):
        problems.append("data.procedural.n_per_class must be at least 1")
    for opt_key, o in [("finetune.optim", cfg["finetune"]["optim"])] + [
        (f"pretrain.optim.{k}", v) for k, v in cfg["pretrain"]["optim"].items()
    ]:
        if o["schedule"] == "step" and not o.get("milestones"):
            problems.append(f"{opt_key}: schedule 'step' needs milestones")
    sel = cfg["pretext"].get("selfie", {})
    if (
        "selfie" in tasks
        and sel.get("d_model")
        and sel["d_model"] % sel.get("heads", 1)
    ):
        problems.append(
            "pretext.selfie.d_model must be divisible by pretext.selfie.heads"
        )
    if problems:
        raise WorkflowError(
            f"invalid config ({_config_files()}):\n  - " + "\n  - ".join(problems)
        )


def validate_schema(data, schema):
    """Snakemake's validate (defaults filled in) against workflow/schemas/<schema>, with the
    schema's task enum ($defs/task) set to P.TASKS: the task names are written once, in
    advss/protocol.py. The derived schema is written to a temporary file for validate().
    """
    import yaml

    doc = yaml.safe_load(Path(WORKFLOW_DIR, "schemas", schema).read_text())
    if "task" in doc.get("$defs", {}):
        doc["$defs"]["task"] = {**doc["$defs"]["task"], "enum": list(P.TASKS)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, schema)
        path.write_text(json.dumps(doc))
        validate(data, schema=str(path))


def validate_section(key, schema):
    """Validate config[key] (a feature's own section) against its own schema file
    (workflow/schemas/<schema>); a missing section means 'feature off'."""
    if key not in config:
        return False
    try:
        validate_schema(config[key], schema)
    except WorkflowError as e:
        raise WorkflowError(
            f"invalid config ({_config_files()}), section {key!r}: {e}"
        ) from None
    return True


try:
    validate_schema(config, "config.schema.yaml")
except WorkflowError as e:
    raise WorkflowError(f"invalid config ({_config_files()}): {e}") from None
check_config(config)

RUN = config["run"]
SEEDS = config["seeds"]
TASKS = config["pretrain"]["tasks"]
SCENARIOS = [tuple(s) for s in config["finetune"]["scenarios"]]
MATCHED = P.matched_baselines(
    config
)  # {task: 'full-adv-ep<N>'}: the compute-matched (P1,F4), one job per budget
MATCHED_JOBS = list(dict.fromkeys(("scratch", ft) for ft in MATCHED.values()))
FT_JOBS = list(
    dict.fromkeys(P.scenario_jobs(SCENARIOS, TASKS) + MATCHED_JOBS)
)  # unique (src, ft); P1 shared by tasks
# the (P1,F4) compute ladder: the plain (P1,F4), the matched budgets and finetune.ladder's epochs;
# the compute claims, table and figure ask for its jobs (claims_inputs.smk), Table 3 does not
LADDER = P.ladder(config)
PT_JOBS = P.pretrain_jobs(SCENARIOS, TASKS)
DATA = f"results/{RUN}/data/dataset.pt"


# ------------------------------------------------------------------ specs
def _dump(d):
    return json.dumps(d, sort_keys=True)


def _common_spec(seed):
    return {
        "model": config["model"],
        "threat": config["threat"],
        "seed": int(seed),
        "deterministic": config.get("deterministic", False),
        "fast": config.get("fast", {}),
    }


def data_spec(wildcards=None):
    return _dump({**config["data"], "revision": P.REVISION["data"]})


def pretrain_spec(wildcards):
    """The spec of any pretrained-model id: one task's P2/P3 here, Table 5's ensembles
    (ensemble_inputs.smk) or the ablations' pool and smoothing runs (ablations_inputs.smk).
    """
    kind = P.pretrain_kind(wildcards.pt)
    if kind == "ensemble":
        return ensemble_pretrain_spec(wildcards)
    if kind == "ablation":
        return ablation_pretrain_spec(wildcards)
    if kind == "contrastive":  # the successors (robust_ssl_inputs.smk)
        return contrastive_pretrain_spec(wildcards)
    return task_pretrain_spec(wildcards)


def task_pretrain_spec(wildcards):
    """P2 (standard) or P3 (adversarial) pretraining of one pretext task."""
    task, mode = P.parse_pt(wildcards.pt)
    adv = mode == "adv"
    pc = config["pretrain"]
    return _dump(
        {
            **_common_spec(wildcards.seed),
            "threat": P.stage_threat(config["threat"], pc),
            "task": task,
            "pretext": {task: config["pretext"].get(task, {})},
            "objective": (
                {"kind": "adversarial", "mix": pc.get("adv_mix", "clean+adv")}
                if adv
                else {"kind": "standard"}
            ),
            "eval_ra": adv,
            "select_by": "last",
            "epochs": P.pretrain_epochs(pc, task),
            "batch_size": pc["batch_size"][task],
            "augment": pc.get("augment", True),
            "optim": pc["optim"][task],
            "revision": {k: P.REVISION[k] for k in ("pgd", "train", task)},
        }
    )


def finetune_spec(wildcards):
    """A fine-tuning job: the finetune section's settings (advss.protocol.finetune_settings),
    for a contrastive model with the successors' per-mode and per-method ones over them
    (robust_ssl_inputs.smk), as spec keys (advss.protocol.finetune_spec_keys)."""
    partial, adv = P.parse_ft(wildcards.ft)
    fc = config["finetune"]
    settings = (
        robust_ssl_settings(wildcards)
        if wildcards.src in P.SUCCESSOR_P  # the successors, DynACL++ included
        else P.finetune_settings(fc)
    )
    spec = {
        **_common_spec(wildcards.seed),
        "threat": P.stage_threat(config["threat"], settings),
        "task": "classification",
        "partial": partial,
        "eval_ra": True,
        **P.finetune_spec_keys(settings, adv),
        "revision": {k: P.REVISION[k] for k in ("pgd", "train")},
    }
    # TRADES' clean target's BN mode was fixed (advss.protocol.REVISION)
    if spec["objective"]["kind"] == "trades":
        spec["revision"]["trades"] = P.REVISION["trades"]
    if (
        partial and fc.get("partial_trains", "untransferred") != "untransferred"
    ):  # the default stays out: same hash
        spec["partial_trains"] = fc["partial_trains"]
    if (
        wildcards.ft == P.BASELINE_FT
    ):  # the one-shot AT + rotation baseline (rotaux_spec, rules/ablations_inputs.smk)
        spec = rotaux_spec(spec)
    epochs = P.ft_epochs(wildcards.ft)
    if (
        epochs
    ):  # '<ft>-ep<N>' (the matched baseline): N epochs, the schedule's milestones scaled
        spec.update(
            epochs=epochs, optim=P.scaled_optim(fc["optim"], epochs, fc["epochs"])
        )
    return _dump(spec)


def evaluate_spec(wildcards):
    ev = config["evaluate"]
    return _dump(
        {
            **_common_spec(wildcards.seed),
            "n_examples": ev.get("n_examples"),
            "batch_size": ev.get("batch_size", 256),
            "revision": {k: P.REVISION[k] for k in ("pgd", "evaluate")},
        }
    )


def report_spec(wildcards=None):
    return _dump(
        {
            "run": RUN,
            "run_dir": f"results/{RUN}",
            "tasks": TASKS,
            "scenarios": [list(s) for s in SCENARIOS],
            "seeds": SEEDS,
            "eval_steps": config["threat"]["eval_steps"],
            "config_hash": P.spec_hash(config),
            "extra_points": FIGURE1_EXTRA,
            "matched": MATCHED,
            "ladder": LADDER,
            "ensemble_star": FIGURE1_STAR,
            "autoattack_n": (
                (config.get("robustness") or {}).get("autoattack") or {}
            ).get("n_examples"),
            **(
                {
                    "robust_ssl_methods": RSSL["methods"],
                    "robust_ssl_finetune": RSSL["finetune"],
                }
                if RSSL
                else {}
            ),  # the successors' claims (robust_ssl_inputs.smk)
        }
    )


# ------------------------------------------------------------------ inputs
def pretrain_data(wildcards):
    """The images a pretraining reads: the run's dataset, or a Table 7 pool (ablations_inputs.smk)."""
    return (
        ablation_data(wildcards)
        if P.pretrain_kind(wildcards.pt) == "ablation"
        else DATA
    )


def finetune_init(wildcards):
    """The pretrained model a fine-tuning job starts from (none for P1 'scratch')."""
    if wildcards.src == "scratch":
        return []
    return f"results/{RUN}/pretrain/{wildcards.src}/seed{wildcards.seed}/model.pt"


def init_flag(wildcards, input):
    return f"--init {input.init}" if input.get("init") else ""


def finetune_results(name, jobs=None):
    return [
        f"results/{RUN}/finetune/{src}/{ft}/seed{seed}/{name}"
        for src, ft in (jobs or FT_JOBS)
        for seed in SEEDS
    ]


# Figure 1's "Ensemble pretrain" point: AP+DPE fine-tuned with F4, when the ensemble feature is on.
FIGURE1_EXTRA = (
    [
        [
            f"Ensemble pretrain: {P.ENSEMBLE_DPE[s][1]}",
            P.ensemble_dpe_id(s),
        ]  # the +1 model where trained
        for s in P.ensemble_signs(config["ensemble"])[:1]
    ]
    if config.get("ensemble")
    else []
)
# Figure 1's red star: the ensemble of the fine-tuned (P3,F4) models of every task (Table 6's
# last row), when the transfer feature builds it with the (P3,F4) models.
FIGURE1_STAR = (
    "+".join(sorted(TASKS))
    if (
        config.get("transfer")
        and len(TASKS) >= 2
        and list(config["transfer"].get("scenario", ["P3", "F4"])) == ["P3", "F4"]
    )
    else None
)


# ------------------------------------------------------------------ resources
def train_runtime(wildcards, attempt):
    """Minutes for a SLURM time limit: ~2 min/epoch for ResNet-50 AT on one GPU,
    grown with each retry (the job resumes, so a retry only needs the rest)."""
    if "ft" in wildcards.keys():
        epochs = P.ft_epochs(wildcards.ft) or config["finetune"]["epochs"]
    else:
        epochs = max(P.pretrain_epochs(config["pretrain"], t) for t in TASKS)
    per_epoch = 2 if config["model"]["arch"] == "resnet50" else 0.5
    return int(30 + per_epoch * epochs * attempt)


def pretrain_runtime(wildcards, attempt):
    """Minutes for a pretraining job: Table 5's ensembles take their own (ensemble_inputs.smk)."""
    if P.pretrain_kind(wildcards.pt) == "ensemble":
        return ensemble_runtime(wildcards, attempt)
    if P.pretrain_kind(wildcards.pt) == "contrastive":
        return contrastive_runtime(wildcards, attempt)
    return train_runtime(wildcards, attempt)
