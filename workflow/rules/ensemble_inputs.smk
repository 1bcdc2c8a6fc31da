# Ensemble adversarial pretraining (paper eq. 2–4): AP+SE (α = 0) and AP+DPE (α > 0; +α·g as
# 'ensemble-dpe', −α·g as 'ensemble-dpe-neg') on one shared trunk, trained by the `pretrain`
# rule (pt = ensemble-<variant>), fine-tuned by the ordinary `finetune` rule, and Table 5.
# The `ensemble` section turns it on; `ensemble.signs` picks the AP+DPE signs.
# Config section, spec builders and input helpers (functions only).
ENS = config["ensemble"] if validate_section("ensemble", "ensemble.schema.yaml") else {}
if ENS:
    ENS.setdefault("members", list(P.TASKS))  # the schema's default: every pretext task
ENS_SIGNS = (
    P.ensemble_signs(ENS) if ENS else []
)  # AP+DPE's signs of α·g, one pretraining each
ENS_VARIANT_SIGN = {
    variant: s for s, (variant, _) in P.ENSEMBLE_DPE.items()
}  # "dpe": +1, "dpe-neg": -1


def ensemble_pretrain_spec(wildcards):
    """The one training loop on the 'ensemble' task with the 'ensemble' objective;
    AP+SE's spec leaves out sign and ridge, which do not act at α = 0; the variant
    (pt 'ensemble-dpe' or 'ensemble-dpe-neg') sets AP+DPE's sign."""
    members = ENS["members"]
    variant = wildcards.pt.removeprefix("ensemble-")
    objective = {
        "kind": "ensemble",
        "alpha": 0.0,
        "mix": config["pretrain"].get("adv_mix", "clean+adv"),
    }
    revision = {k: P.REVISION[k] for k in ("pgd", "train", *members)}
    if (
        variant != "se"
    ):  # AP+SE (α = 0) is the plain adversarial objective: no `ensemble` revision
        objective.update(
            alpha=ENS["alpha"], sign=ENS_VARIANT_SIGN[variant], ridge=ENS["ridge"]
        )
        revision["ensemble"] = P.REVISION["ensemble"]
    return _dump(
        {
            **_common_spec(wildcards.seed),
            "task": "ensemble",
            "pretext": {
                "ensemble": {
                    "members": members,
                    "pretext": {t: config["pretext"].get(t, {}) for t in members},
                }
            },
            "objective": objective,
            "eval_ra": True,
            "select_by": "last",
            "epochs": ENS["epochs"],
            "batch_size": ENS["batch_size"],
            "augment": config["pretrain"].get("augment", True),
            "optim": ENS["optim"],
            "revision": revision,
        }
    )


def ensemble_runtime(wildcards, attempt):
    """Minutes: the three tasks' passes (and, for DPE, double backward) cost ~3–6× a single P3 epoch."""
    per_epoch = 8 if config["model"]["arch"] == "resnet50" else 2
    return int(30 + per_epoch * ENS["epochs"] * attempt)


def table5_inputs(wildcards):
    srcs = (
        [P.pretrain_id(t, "P3") for t in TASKS]
        + ["ensemble-se"]
        + [P.ensemble_dpe_id(s) for s in ENS_SIGNS]
    )
    jobs = [(src, P.finetune_id(f)) for f in ENS["finetune"] for src in srcs]
    aa = (
        finetune_results("eval/autoattack.json", jobs) if AA else []
    )  # the AutoAttack column
    return (
        finetune_results("test.json", jobs) + finetune_results("meta.json", jobs) + aa
    )


def ensemble_report_spec(wildcards=None):
    return _dump(
        {
            **json.loads(report_spec()),
            "ensemble_alpha": ENS["alpha"],
            "ensemble_signs": ENS_SIGNS,
            "ensemble_finetune": ENS["finetune"],
        }
    )
