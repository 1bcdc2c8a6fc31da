# Beyond the paper (issue 20): its successors, SimCLR (P2), ACL (DS, dual BN; P3) and DynACL
# (P3), pretrained by the one `pretrain` rule (pt = simclr | acl | dynacl) on the `contrastive`
# task, fine-tuned by the ordinary `finetune` rule and scored with the same attacks; the
# table `robust_ssl` puts them beside the 2020 tasks' (P3,F4) and the published figures.
# The `robust_ssl` section turns it on. Config section, spec builders and inputs (functions only).
RSSL = (
    config["robust_ssl"]
    if validate_section("robust_ssl", "robust_ssl.schema.yaml")
    else {}
)


def contrastive_pretrain_spec(wildcards):
    """The one training loop on the 'contrastive' task: the method's objective and options
    (advss.protocol.contrastive_spec) with the section's epochs, batch and optimiser."""
    common = _common_spec(wildcards.seed)
    common["threat"] = P.stage_threat(common["threat"], RSSL)  # ACL crafts in eval mode
    if RSSL.get("train_steps"):  # the pretraining attack's own steps (ACL, DynACL: 5)
        common["threat"] = {**common["threat"], "train_steps": RSSL["train_steps"]}
    return _dump(
        {
            **common,
            **P.contrastive_spec(wildcards.pt, RSSL.get("contrastive", {})),
            "val_max": RSSL.get("val_max"),
            "select_by": "last",
            "epochs": RSSL["epochs"],
            "batch_size": RSSL["batch_size"],
            "optim": RSSL["optim"],
            "revision": {k: P.REVISION[k] for k in ("pgd", "train", "contrastive")},
        }
    )


def contrastive_runtime(wildcards, attempt):
    """Minutes for a SLURM time limit: two views through PGD-k and two losses per image, an
    estimate of ~1 min/epoch for a ResNet-18 at batch 512 on one GPU (3 for a ResNet-50),
    over the section's epochs, grown with each retry (the job resumes)."""
    per_epoch = {"resnet18": 1.0, "resnet50": 3.0}.get(config["model"]["arch"], 0.2)
    return int(30 + per_epoch * RSSL["epochs"] * attempt)


def robust_ssl_settings(wildcards):
    """A contrastive model's fine-tuning settings: the finetune section's, with
    robust_ssl.modes.<F> and robust_ssl.method_modes.<method>.<F> over them
    (advss.protocol.finetune_settings): RSB's SLF, ALF and AFF per method."""
    try:
        return P.finetune_settings(
            config["finetune"], RSSL, wildcards.src, P.FT_TO_F[wildcards.ft]
        )
    except ValueError as e:
        raise WorkflowError(f"invalid config ({_config_files()}), robust_ssl: {e}")


def robust_ssl_jobs():
    """(src, ft): each 2020 task's (P3,F4), then each method under each configured mode."""
    jobs = [(P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in TASKS]
    return jobs + [
        (m, P.finetune_id(f)) for m in RSSL["methods"] for f in RSSL["finetune"]
    ]


def robust_ssl_inputs(wildcards):
    jobs = robust_ssl_jobs()
    aa = finetune_results("eval/autoattack.json", jobs) if AA else []
    return (
        finetune_results("test.json", jobs)
        + finetune_results("meta.json", jobs)
        + aa
        + pretrain_metas(dict.fromkeys(src for src, _ in jobs))
    )


def robust_ssl_report_spec(wildcards=None):
    return _dump(
        {
            **json.loads(report_spec()),
            "robust_ssl_methods": RSSL["methods"],
            "robust_ssl_finetune": RSSL["finetune"],
            "arch": config["model"]["arch"],
        }
    )


def model_card_jobs():
    """The fine-tuned models that get a card: the contrastive ones, when `cards` is on and
    AutoAttack scores them (RobustBench ranks cards by it: advss.cards)."""
    return (
        [(m, ft) for m, ft in robust_ssl_jobs() if m in P.SUCCESSOR_P]
        if RSSL.get("cards", True) and AA
        else []
    )


def successor_claim_inputs():
    """The claims row 'best contrastive (P3,F4) AutoAttack RA ≥ the best 2020 task's' reads the
    AutoAttack results (json, and the per-example npz for McNemar) of every (P3,F4) it compares.
    """
    if not (RSSL and AA):
        return []
    p3 = [m for m in RSSL["methods"] if P.SUCCESSOR_P[m] == "P3"]
    jobs = [(P.pretrain_id(t, "P3"), "full-adv") for t in TASKS] + [
        (m, "full-adv") for m in p3
    ]
    return (
        finetune_results("eval/autoattack.json", jobs)
        + finetune_results("eval/autoattack.npz", jobs)
        if p3
        else []
    )


def card_spec(wildcards):
    """What a model card records besides its result files: the name, dataset, model and threat,
    and the method's paper and published figure (robust_ssl.card_info)."""
    f = P.FT_TO_F[wildcards.ft]
    info = RSSL.get("card_info", {}).get(wildcards.src, {})
    label = P.SUCCESSOR_LABEL.get(wildcards.src, wildcards.src)
    p = P.SUCCESSOR_P.get(wildcards.src, "P3")
    return _dump(
        {
            "name": f"advss {label} ({p},{f}) {P.SUCCESSOR_FT.get(f, '')}".strip()
            + f", run {RUN}, seed {wildcards.seed}",
            "dataset": config["data"]["name"],
            "model": config["model"],
            "threat": config["threat"],
            "footnote": f"fine-tuning: {card_fine_tuning(wildcards)}; config {P.spec_hash(config)}",
            **{k: info[k] for k in ("link", "authors", "venue") if k in info},
            "reported": info.get("reported", {}).get(f),
        }
    )


def card_fine_tuning(wildcards):
    """The card's words for how its model was fine-tuned (advss.protocol.fine_tuning_label)."""
    settings = robust_ssl_settings(wildcards)
    job = {"threat": P.stage_threat(config["threat"], settings)}
    job.update(P.finetune_spec_keys(settings, P.parse_ft(wildcards.ft)[1]))
    return f"{P.fine_tuning_label(job)}; {P.data_selection(job)}"


def card_inputs(wildcards):
    d = f"results/{RUN}/finetune/{wildcards.src}/{wildcards.ft}/seed{wildcards.seed}"
    return {
        "data": DATA,
        "model": f"{d}/model.pt",
        "test": f"{d}/test.json",
        **({"aa": f"{d}/eval/autoattack.json"} if AA else {}),
    }


def model_cards():
    """Every card and program the run makes (`all` builds them)."""
    return (
        [
            f"results/{RUN}/cards/{src}/{ft}/seed{s}/{name}"
            for src, ft in model_card_jobs()
            for s in SEEDS
            for name in ("card.json", "model.pt2")
        ]
        if RSSL
        else []
    )
