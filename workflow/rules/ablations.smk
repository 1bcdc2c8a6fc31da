# Ablations: Table 7 (AT pretraining on unlabeled pools of several sizes), Table 8
# (random-smoothing pretraining instead of AT) and the one-shot baseline (AT with an
# auxiliary rotation loss, Hendrycks et al. 2019). Each sub-section of `ablations` turns
# its part on. Also checks `data.imagefolder` (R-ImageNet), the dataset kind of this feature.
from snakemake.io import Wildcards


if config["data"]["name"] == "imagefolder":
    try:
        validate(config["data"].get("imagefolder", {}), schema="../schemas/imagefolder.schema.yaml")
    except WorkflowError as e:
        raise WorkflowError(f"invalid config ({_config_files()}), data.imagefolder: {e}") from None

ABL = config["ablations"] if validate_section("ablations", "../schemas/ablations.schema.yaml") else {}
for _part in ("pool", "smoothing"):
    _extra = sorted(set(ABL.get(_part, {}).get("tasks", [])) - set(TASKS))
    if _extra:
        raise WorkflowError(f"invalid config ({_config_files()}): ablations.{_part}.tasks {_extra} "
                            f"are not in pretrain.tasks, which holds their batch sizes and optimisers")
if ABL.get("pool", {}).get("source", "train") != "train" and not ABL["pool"].get("path"):
    raise WorkflowError(f"invalid config ({_config_files()}): ablations.pool.source "
                        f"{ABL['pool']['source']!r} needs ablations.pool.path")

TABLES += [t for t, part in (("table7", "pool"), ("table8", "smoothing"), ("table_rotaux", "baseline")) if part in ABL]
FIGURES += ["figure_pool"] if "pool" in ABL else []


# ------------------------------------------------------------------ specs
def _wildcards(**kw):
    """Wildcards for calling common.smk's spec builders on the job an ablation varies."""
    return Wildcards(fromdict={k: str(v) for k, v in kw.items()})


def pool_spec(wildcards=None):
    return _dump({k: v for k, v in ABL["pool"].items() if k in ("source", "path", "seed")})


def ablation_pretrain_spec(wildcards):
    """The P3 (pool) or P2 (smoothing) pretraining spec of common.smk, with the ablated part."""
    task, kind = wildcards.abl.split("-", 1)
    if kind == "smooth":
        sc = ABL["smoothing"]
        spec = json.loads(pretrain_spec(_wildcards(pt=f"{task}-std", seed=wildcards.seed)))
        spec["objective"] = {"kind": "smoothing", "sigma": sc.get("sigma", 0.25)}  # Cohen et al. 2019
        spec["epochs"] = sc.get("epochs") or spec["epochs"]
    else:
        pc = ABL["pool"]
        spec = json.loads(pretrain_spec(_wildcards(pt=f"{task}-adv", seed=wildcards.seed)))
        spec["pool"] = {**json.loads(pool_spec()), "size": int(kind.split("-n")[1])}
        spec["epochs"] = pc.get("epochs") or spec["epochs"]
    return _dump(spec)


def ablation_data(wildcards):
    if wildcards.abl.endswith("-smooth"):
        return DATA
    return f"results/{RUN}/data/pool-n{wildcards.abl.split('-n')[1]}.pt"


def pool_source(wildcards):
    """An .npy pool is an input (editing it reruns the pools); a folder is not listed."""
    pc = ABL["pool"]
    return [pc["path"]] if pc.get("source") == "npy" else []


def rotaux_spec(wildcards):
    """F4 from scratch (common.smk's spec) with the rotation-auxiliary task."""
    bc = ABL["baseline"]
    spec = json.loads(finetune_spec(_wildcards(ft="full-adv", seed=wildcards.seed)))
    spec["task"] = "rotaux"
    spec["pretext"] = {"rotaux": {"rot_weight": bc.get("rot_weight", 0.5)}}
    spec["epochs"] = bc.get("epochs") or spec["epochs"]
    return _dump(spec)


def rotaux_runtime(wildcards, attempt):
    """Two views per image: twice the time of an F4 run."""
    return 2 * train_runtime(_wildcards(ft="full-adv", seed=wildcards.seed), attempt)


def ablation_report_spec(wildcards=None):
    spec = json.loads(report_spec())
    spec.update({k: v for k, v in ABL.items()})
    if "baseline" in ABL:  # (label, Table 3 key, source) of the rows beside the baseline
        spec["baseline"]["compare"] = [["AT from scratch (P1,F4)", "P1F4", "scratch"]] + (
            [["Rotation pretraining (P3,F4)", "P3F4", "rotation-adv"]] if "rotation" in TASKS else [])
    return _dump(spec)


def _ablation_results(jobs):
    return finetune_results("test.json", jobs) + finetune_results("meta.json", jobs)


def table7_inputs(wildcards):
    pc = ABL["pool"]
    srcs = [f"{t}-adv-n{n}" for t in pc["tasks"] for n in pc["sizes"]]
    srcs += [f"{t}-adv" for t in pc["tasks"]] if pc.get("include_full", True) else []
    return _ablation_results([(s, P.finetune_id(f)) for s in srcs for f in pc["finetune"]])


def table8_inputs(wildcards):
    sc = ABL["smoothing"]
    return _ablation_results([(f"{t}-smooth", P.finetune_id(f)) for t in sc["tasks"] for f in sc["finetune"]])


def table_rotaux_inputs(wildcards):
    compare = json.loads(ablation_report_spec())["baseline"]["compare"]
    return _ablation_results([("scratch", P.BASELINE_FT)] + [(src, "full-adv") for _, _, src in compare])


# ------------------------------------------------------------------ rules
localrules:
    prepare_pool,
    table7,
    table8,
    table_rotaux,
    figure_pool,


ruleorder: finetune_rotaux > finetune


# One unlabeled pretraining pool (Table 7): a seeded subset of the configured source.
rule prepare_pool:
    input:
        data=rules.prepare_data.output.data,
        source=pool_source,
    output:
        pool="results/{run}/data/pool-n{size}.pt",
    log:
        "results/{run}/logs/prepare_pool/n{size}.log",
    params:
        spec=pool_spec,
    wildcard_constraints:
        size=r"\d+",
    conda:
        "../../environment.yml"
    message:
        "Building the pretraining pool of {wildcards.size} images"
    shell:
        "python -m advss pool --spec {params.spec:q} --data {input.data} --size {wildcards.size}"
        " --out {output.pool} > {log} 2>&1"


# Ablated pretraining: AT on a pool (<task>-adv-n<size>) or Gaussian noise (<task>-smooth).
rule pretrain_ablation:
    input:
        data=ablation_data,
    output:
        model="results/{run}/pretrain/{abl}/seed{seed}/model.pt",
        metrics="results/{run}/pretrain/{abl}/seed{seed}/metrics.csv",
        meta="results/{run}/pretrain/{abl}/seed{seed}/meta.json",
    log:
        "results/{run}/logs/pretrain/{abl}/seed{seed}.log",
    params:
        spec=ablation_pretrain_spec,
        resume="results/{run}/.resume/pretrain/{abl}/seed{seed}",
    wildcard_constraints:
        abl=P.ABLATION_PT_RE,
    threads: 1
    resources:
        gpu=1,
        runtime=train_runtime,
    conda:
        "../../environment.yml"
    message:
        "Pretraining {wildcards.abl} (seed {wildcards.seed})"
    shell:
        "python -m advss pretrain --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-metrics {output.metrics} --out-meta {output.meta}"
        " --resume-dir {params.resume} > {log} 2>&1"


# The one-shot baseline: AT + rotation auxiliary from scratch; evaluated by `evaluate`.
rule finetune_rotaux:
    input:
        data=rules.prepare_data.output.data,
    output:
        model="results/{run}/finetune/scratch/full-adv-rotaux/seed{seed}/model.pt",
        best_ta="results/{run}/finetune/scratch/full-adv-rotaux/seed{seed}/best_ta.pt",
        metrics="results/{run}/finetune/scratch/full-adv-rotaux/seed{seed}/metrics.csv",
        meta="results/{run}/finetune/scratch/full-adv-rotaux/seed{seed}/meta.json",
    log:
        "results/{run}/logs/finetune/scratch/full-adv-rotaux/seed{seed}.log",
    params:
        spec=rotaux_spec,
        resume="results/{run}/.resume/finetune/scratch/full-adv-rotaux/seed{seed}",
    threads: 1
    resources:
        gpu=1,
        runtime=rotaux_runtime,
    conda:
        "../../environment.yml"
    message:
        "Training the one-shot AT + rotation-auxiliary baseline (seed {wildcards.seed})"
    shell:
        "python -m advss rotaux --spec {params.spec:q} --data {input.data} --threads {threads}"
        " --out-model {output.model} --out-best-ta {output.best_ta} --out-metrics {output.metrics}"
        " --out-meta {output.meta} --resume-dir {params.resume} > {log} 2>&1"


rule table7:
    input:
        table7_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table7.csv", category="Tables", labels={"table": "7"}),
        md=f"results/{RUN}/tables/table7.md",
        tex=f"results/{RUN}/tables/table7.tex",
    log:
        f"results/{RUN}/logs/report/table7.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 7: pretraining-pool size"
    shell:
        "python -m advss table table7 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table8:
    input:
        table8_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table8.csv", category="Tables", labels={"table": "8"}),
        md=f"results/{RUN}/tables/table8.md",
        tex=f"results/{RUN}/tables/table8.tex",
    log:
        f"results/{RUN}/logs/report/table8.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Table 8: random-smoothing pretraining"
    shell:
        "python -m advss table table8 --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule table_rotaux:
    input:
        table_rotaux_inputs,
    output:
        csv=report(f"results/{RUN}/tables/table_rotaux.csv", category="Tables", labels={"table": "one-shot baseline"}),
        md=f"results/{RUN}/tables/table_rotaux.md",
        tex=f"results/{RUN}/tables/table_rotaux.tex",
    log:
        f"results/{RUN}/logs/report/table_rotaux.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "The one-shot AT + rotation-auxiliary baseline beside (P1,F4) and (P3,F4)"
    shell:
        "python -m advss table table_rotaux --spec {params.spec:q} --out {output.csv} > {log} 2>&1"


rule figure_pool:
    input:
        table7_inputs,
    output:
        png=report(f"results/{RUN}/figures/figure_pool.png", category="Figures", labels={"figure": "pool size"}),
        pdf=f"results/{RUN}/figures/figure_pool.pdf",
    log:
        f"results/{RUN}/logs/report/figure_pool.log",
    params:
        spec=ablation_report_spec,
    conda:
        "../../environment.yml"
    message:
        "Figure: TA and RA against pretraining-pool size (Table 7)"
    shell:
        "python -m advss figure figure_pool --spec {params.spec:q} --out {output.png} > {log} 2>&1"
