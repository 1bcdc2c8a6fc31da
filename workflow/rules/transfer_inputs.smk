# Transfer attacks between the per-task fine-tuned models (Table 4, Figure 5) and
# ensembles of them with averaged softmax (Table 6). The `transfer` section turns it on.
# Config section, spec builders and input helpers (functions only, as --lint asks).
XFER = (
    config["transfer"] if validate_section("transfer", "transfer.schema.yaml") else {}
)
XFER_P, XFER_F = XFER.get("scenario", ["P3", "F4"])
XFER_FT = P.finetune_id(XFER_F)


def scenario_model(task, seed):
    """The fine-tuned model of one task in the transfer scenario (the paper: (P3,F4))."""
    return f"results/{RUN}/finetune/{P.source_id(task, XFER_P)}/{XFER_FT}/seed{seed}/model.pt"


def transfer_targets(wildcards):
    return [scenario_model(t, wildcards.seed) for t in TASKS]


def transfer_spec(wildcards):
    """The evaluation spec (same examples, seeds and batches as `evaluate`) + the model ids."""
    return _dump(
        {
            **json.loads(evaluate_spec(wildcards)),
            "source": wildcards.src,
            "targets": [P.source_id(t, XFER_P) for t in TASKS],
        }
    )


def ensemble_members(wildcards):
    return [scenario_model(t, wildcards.seed) for t in wildcards.members.split("+")]


def ensemble_eval_spec(wildcards):
    return _dump(
        {
            **json.loads(evaluate_spec(wildcards)),
            "members": wildcards.members,
            "scenario": [XFER_P, XFER_F],
        }
    )


def transfer_results(wildcards):
    return [
        f"results/{RUN}/transfer/{P.source_id(t, XFER_P)}/{XFER_FT}/seed{s}.npz"
        for t in TASKS
        for s in SEEDS
    ]


def table6_inputs(wildcards):
    sets = P.member_sets(TASKS)
    # the AutoAttack column for the ensembles robustness.autoattack.ensembles names
    aa_sets = ["+".join(sorted(m)) for m in (AA or {}).get("ensembles") or []]
    aa = [
        f"results/{RUN}/ensembles/{m}/autoattack-seed{s}.json"
        for m in sets
        if m in aa_sets
        for s in SEEDS
    ]
    return [
        f"results/{RUN}/ensembles/{m}/seed{s}.json" for m in sets for s in SEEDS
    ] + aa


def transfer_report_spec(wildcards=None):
    return _dump({**json.loads(report_spec()), "transfer_scenario": [XFER_P, XFER_F]})
