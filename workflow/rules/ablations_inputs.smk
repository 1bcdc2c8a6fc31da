# Ablations: Table 7 (AT pretraining on unlabeled pools of several sizes), Table 8
# (random-smoothing pretraining instead of AT) and the one-shot baseline (AT with an
# auxiliary rotation loss, Hendrycks et al. 2019). Each sub-section of `ablations` turns
# its part on. Config checks, specs and input helpers (functions only: Snakemake's linter
# asks for rules and functions in separate files).
# data.imagefolder (R-ImageNet), the dataset kind of this feature
if config["data"]["name"] == "imagefolder":
    try:
        validate_schema(
            config["data"].get("imagefolder", {}), "imagefolder.schema.yaml"
        )
    except WorkflowError as e:
        raise WorkflowError(
            f"invalid config ({_config_files()}), data.imagefolder: {e}"
        ) from None

ABL = (
    config["ablations"]
    if validate_section("ablations", "ablations.schema.yaml")
    else {}
)
for _part in ("pool", "smoothing"):
    _extra = sorted(set(ABL.get(_part, {}).get("tasks", [])) - set(TASKS))
    if _extra:
        raise WorkflowError(
            f"invalid config ({_config_files()}): ablations.{_part}.tasks {_extra} "
            f"are not in pretrain.tasks, which holds their batch sizes and optimisers"
        )
if ABL.get("pool", {}).get("source", "train") != "train" and not ABL["pool"].get(
    "path"
):
    raise WorkflowError(
        f"invalid config ({_config_files()}): ablations.pool.source "
        f"{ABL['pool']['source']!r} needs ablations.pool.path"
    )


# ------------------------------------------------------------------ specs
class _Wildcards(dict):
    """Stand-in wildcards (attributes and keys()) for calling common.smk's spec builders
    on the job an ablation varies."""

    __getattr__ = dict.__getitem__


def _wildcards(**kw):
    return _Wildcards({k: str(v) for k, v in kw.items()})


def pool_spec(wildcards=None):
    return _dump(
        {k: v for k, v in ABL["pool"].items() if k in ("source", "path", "seed")}
    )


def ablation_pretrain_spec(wildcards):
    """The P3 (pool) or P2 (smoothing) pretraining spec of common.smk, with the ablated part
    (pt '<task>-adv-n<size>' or '<task>-smooth')."""
    task, kind = wildcards.pt.split("-", 1)
    if kind == "smooth":
        sc = ABL["smoothing"]
        spec = json.loads(
            task_pretrain_spec(_wildcards(pt=f"{task}-std", seed=wildcards.seed))
        )
        spec["objective"] = {
            "kind": "smoothing",
            "sigma": sc.get("sigma", 0.25),
        }  # Cohen et al. 2019
        spec["epochs"] = sc.get("epochs") or spec["epochs"]
    else:
        pc = ABL["pool"]
        spec = json.loads(
            task_pretrain_spec(_wildcards(pt=f"{task}-adv", seed=wildcards.seed))
        )
        spec["pool"] = {**json.loads(pool_spec()), "size": int(kind.split("-n")[1])}
        spec["epochs"] = pc.get("epochs") or spec["epochs"]
    return _dump(spec)


def ablation_data(wildcards):
    if wildcards.pt.endswith("-smooth"):
        return DATA
    return f"results/{RUN}/data/pool-n{wildcards.pt.split('-n')[1]}.pt"


def pool_source(wildcards):
    """An .npy pool is an input (editing it reruns the pools); a folder is not listed."""
    pc = ABL["pool"]
    return [pc["path"]] if pc.get("source") == "npy" else []


def rotaux_spec(spec):
    """finetune_spec's F4 spec (common.smk) turned into the one-shot baseline's: AT with
    the rotation-auxiliary task, Madry's objective as Hendrycks et al."""
    bc = ABL.get("baseline", {})
    return {
        **spec,
        "task": "rotaux",
        "pretext": {"rotaux": {"rot_weight": bc.get("rot_weight", 0.5)}},
        "objective": {"kind": "adversarial", "mix": "adv"},
        "epochs": bc.get("epochs") or spec["epochs"],
    }


def ablation_report_spec(wildcards=None):
    spec = json.loads(report_spec())
    spec.update(
        json.loads(json.dumps(ABL))
    )  # a copy: "compare" below must not change the config (its hash)
    if (
        "baseline" in ABL
    ):  # (label, Table 3 key, source) of the rows beside the baseline
        spec["baseline"]["compare"] = [
            ["AT from scratch (P1,F4)", "P1F4", "scratch"]
        ] + (
            [["Rotation pretraining (P3,F4)", "P3F4", "rotation-adv"]]
            if "rotation" in TASKS
            else []
        )
    return _dump(spec)


def _ablation_results(jobs):
    return finetune_results("test.json", jobs) + finetune_results("meta.json", jobs)


def table7_inputs(wildcards):
    pc = ABL["pool"]
    srcs = [f"{t}-adv-n{n}" for t in pc["tasks"] for n in pc["sizes"]]
    srcs += [f"{t}-adv" for t in pc["tasks"]] if pc.get("include_full", True) else []
    return _ablation_results(
        [(s, P.finetune_id(f)) for s in srcs for f in pc["finetune"]]
    )


def table8_inputs(wildcards):
    sc = ABL["smoothing"]
    return _ablation_results(
        [(f"{t}-smooth", P.finetune_id(f)) for t in sc["tasks"] for f in sc["finetune"]]
    )


def table_rotaux_inputs(wildcards):
    compare = json.loads(ablation_report_spec())["baseline"]["compare"]
    return _ablation_results(
        [("scratch", P.BASELINE_FT)] + [(src, "full-adv") for _, _, src in compare]
    )
