# DynACL++ (issue 25, item 2): DynACL's pretraining post-processed as PKU-ML/DYNACL @7d143db does
# (assign_label.py, LPAFT.py, LPAFT_AFF.py), on when robust_ssl.methods lists dynacl++:
# pseudo-labels by k-means on DynACL's features (rule pseudolabel), linear probing on them (LP),
# then adversarial fine-tuning (AFT) from the probed head (rule dynaclpp_stage, the one loop).
# The AFT's model is the source 'dynacl++' that the ordinary finetune rule takes through SLF,
# ALF and AFF (P.dynaclpp_stage_keys says why one chain serves all three). Functions only.
DYNACLPP = RSSL.get("dynaclpp", {}) if RSSL else {}
if RSSL and P.DYNACLPP in RSSL["methods"] and not DYNACLPP:
    raise WorkflowError(
        f"invalid config ({_config_files()}): robust_ssl.methods lists {P.DYNACLPP} but "
        "robust_ssl.dynaclpp (its clustering, lp and aft settings) is missing"
    )


def pseudolabel_spec(wildcards):
    """The clustering job's settings: DynACL's model, the number of clusters, the BN route
    of the features and the k-means restarts (advss.pseudolabel.run)."""
    keys = ("clusters", "route", "restarts", "iters", "tol")
    return _dump(
        {
            "model": config["model"],
            "seed": int(wildcards.seed),
            **{k: DYNACLPP[k] for k in keys if k in DYNACLPP},
        }
    )


def dynaclpp_stage(wildcards):
    return next(s for s, d in P.DYNACLPP_STAGES.items() if d == wildcards.stage)


def dynaclpp_spec(wildcards):
    """LP or AFT on the pseudo-labels: robust_ssl.dynaclpp.<stage>'s settings over the finetune
    section's (advss.protocol.finetune_settings), as spec keys (advss.protocol.dynaclpp_stage_keys).
    """
    stage = dynaclpp_stage(wildcards)
    try:
        settings = P.finetune_settings(
            config["finetune"], {"modes": {stage: DYNACLPP[stage]}}, None, stage
        )
        keys = P.dynaclpp_stage_keys(stage, settings)
    except (ValueError, KeyError) as e:
        raise WorkflowError(
            f"invalid config ({_config_files()}), robust_ssl.dynaclpp: {e}"
        )
    spec = {
        **_common_spec(wildcards.seed),
        "threat": P.stage_threat(config["threat"], settings),
        "task": "classification",
        **keys,
        "revision": {k: P.REVISION[k] for k in ("pgd", "train")},
    }
    if spec["objective"]["kind"] == "trades":
        spec["revision"]["trades"] = P.REVISION["trades"]
    return _dump(spec)


def dynaclpp_init(wildcards):
    """LP starts from DynACL's pretraining, AFT from LP's model."""
    src = (
        P.DYNACLPP_BASE
        if dynaclpp_stage(wildcards) == "lp"
        else P.DYNACLPP_STAGES["lp"]
    )
    return f"results/{RUN}/pretrain/{src}/seed{wildcards.seed}/model.pt"


def dynaclpp_runtime(wildcards, attempt):
    """Minutes: ~0.5 min per epoch of a ResNet-18 at batch 512 on one GPU, grown per retry."""
    return int(30 + 0.5 * DYNACLPP[dynaclpp_stage(wildcards)]["epochs"] * attempt)
