"""Where each job's result lies under results/<run>/, and readers of those files: the one
home of the result-path grammar that tables, figures and claims read back.

    finetune/<src>/<ft>/seed<k>/{test,meta}.json     a fine-tuned model (advss train/evaluate)
    finetune/<src>/<ft>/seed<k>/eval/<suite>.json     its robustness suites
    pretrain/<pt>/seed<k>/meta.json                   a pretraining (its epochs: the budgets)
    ensembles/<a+b>/seed<k>.{json,npz}                a softmax-average ensemble (Table 6)
    ensembles/<a+b>/autoattack-seed<k>.json           its AutoAttack
    transfer/<src>/<ft>/seed<k>.npz                   transfer attacks from one source
"""
from __future__ import annotations

import json
from pathlib import Path

from advss import protocol as P
from advss.io import AdvssError, load_npz, read_json


def finetune_dir(run_dir, src, ft, seed) -> Path:
    return Path(run_dir) / "finetune" / src / ft / f"seed{seed}"


def finetune_result(run_dir, src, ft, seed) -> dict:
    """Test TA/RA (%), AutoAttack RA (%, NaN where not run) and epochs of one fine-tuned model."""
    d = finetune_dir(run_dir, src, ft, seed)
    test, meta = read_json(d / "test.json"), read_json(d / "meta.json")
    aa = autoattack_column(run_dir, src, ft, seed)  # eval/autoattack.json beside test.json, when run
    return {"ta": 100 * test["ta"], "ra": 100 * test["ra"], "ra_aa": float("nan") if aa is None else aa,
            "epochs": meta["epochs_to_best"], "epochs_run": meta["epochs_run"], "config_hash": meta["spec_hash"],
            "select_by": meta.get("spec", {}).get("select_by")}


def pretrain_dir(run_dir, pt, seed) -> Path:
    return Path(run_dir) / "pretrain" / pt / f"seed{seed}"


def training_passes(run_dir, src, ft, seed) -> float:
    """Forward+backward passes per training image that made one fine-tuned model, its
    pretraining's included: P.passes_per_image(spec) × the epochs each job ran, from their
    meta.json (every job the source stands on, P.pretrain_chain: DynACL++'s LP and AFT and
    DynACL's pretraining). NaN where a meta.json is missing or does not record its spec."""
    dirs = [finetune_dir(run_dir, src, ft, seed)] + [pretrain_dir(run_dir, pt, seed) for pt in P.pretrain_chain(src)]
    try:
        metas = [read_json(d / "meta.json") for d in dirs]
        return sum(P.passes_per_image(m["spec"]) * m["epochs_run"] for m in metas)
    except (AdvssError, KeyError):
        return float("nan")


def eval_path(run_dir, src, ft, seed, suite) -> Path:
    return finetune_dir(run_dir, src, ft, seed) / "eval" / f"{suite}.json"


def ensemble_dir(run_dir, members) -> Path:
    """members: task names (any order) or an 'a+b' id already sorted."""
    members = members.split("+") if isinstance(members, str) else members
    return Path(run_dir) / "ensembles" / "+".join(sorted(members))


def ensemble_path(run_dir, members, seed) -> Path:
    return ensemble_dir(run_dir, members) / f"autoattack-seed{seed}.json"


def autoattack_column(run_dir, src, ft, seed):
    """AutoAttack RA (%) of one fine-tuned model, or None where it was not run."""
    path = eval_path(run_dir, src, ft, seed, "autoattack")
    return 100 * json.loads(path.read_text())["ra"] if path.is_file() else None


def autoattack_ensemble_column(run_dir, members, seed):
    """AutoAttack RA (%) of a softmax-average ensemble (Table 6), or None."""
    path = ensemble_path(run_dir, members, seed)
    return 100 * json.loads(path.read_text())["ra"] if path.is_file() else None


def eval_results(spec, jobs, suite):
    """(src, ft, seed, result) of a robustness suite for every job and seed of a table's spec."""
    return [(src, ft, seed, read_json(eval_path(spec["run_dir"], src, ft, seed, suite)))
            for src, ft in jobs for seed in spec["seeds"]]


def transfer_npz(run_dir, src, ft, seed):
    return load_npz(Path(run_dir) / "transfer" / src / ft / f"seed{seed}.npz")
