"""Ensembles of fine-tuned models (Table 6): the members' softmax outputs averaged,
evaluated clean and under white-box PGD against that averaged output.

`python -m advss ensemble-eval`: the ensemble is one module whose output is the log
of the averaged softmax, so the ordinary classification loss on it is the NLL of the
averaged prediction, and `advss.train.evaluate` attacks and scores it exactly as it
does a single model (same examples, same generators).
"""
from __future__ import annotations

import math
import time


def add_arguments(p):
    from advss.cli import common_args

    common_args(p)
    p.add_argument("--models", nargs="+", required=True, help="the members' checkpoints")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)


def main(args):
    import json

    print(json.dumps(run(args.spec, args.data, args.models, args.out_json, args.out_npz, args.device)))


def softmax_average(members):
    """nn.Module: x -> log(mean_m softmax(member_m(x))). One member returns its own
    logits, which have the same softmax, so a one-member ensemble is its member."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class SoftmaxAverage(nn.Module):
        def __init__(self):
            super().__init__()
            self.members = nn.ModuleList(members)

        def forward(self, x):
            if len(self.members) == 1:
                return self.members[0](x)
            logp = torch.stack([F.log_softmax(m(x), -1) for m in self.members])
            return torch.logsumexp(logp, 0) - math.log(len(self.members))

    return SoftmaxAverage()


def run(spec, data_path, model_paths, out_json, out_npz, device="auto"):
    from advss import data as D
    from advss.attacks import Threat
    from advss.evaluate import load_classifier, test_split
    from advss.io import pick_device, provenance, save_npz, set_deterministic, write_json
    from advss.train import evaluate
    from advss.transfer import prepare_model

    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    members, task = [], None
    for path in model_paths:
        m, task = load_classifier(path, spec["model"], data["num_classes"], dev)
        members.append(prepare_model(m, spec, dev))
    model = softmax_average(members).to(dev).eval()
    x, y = test_split(data, spec.get("n_examples"))
    threat = Threat.from_cfg(spec["threat"], "eval_steps")
    ev = evaluate(model, task, x, y, threat, int(spec.get("batch_size", 256)), int(spec.get("seed", 0)))  # fp32
    save_npz(out_npz, y=y.cpu().numpy(), correct_clean=ev["clean"].numpy().astype(bool),
             correct_adv=ev["adv"].numpy().astype(bool), pred_clean=ev["pred_clean"].numpy(),
             pred_adv=ev["pred_adv"].numpy())
    res = {"members": spec.get("members"), "ta": float(ev["clean"].mean()), "ra": float(ev["adv"].mean()),
           "n": int(len(y)), "attack": f"pgd{threat.steps}-{threat.norm} on the averaged softmax",
           "eval_precision": "fp32"}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, models=[str(p) for p in model_paths])})
    return res


# ------------------------------------------------------------------ Table 6
def member_sets(tasks):
    """Every pair and the whole set of tasks, each as a sorted 'a+b' id (the paper's rows)."""
    import itertools

    tasks = sorted(tasks)
    return ["+".join(c) for k in range(2, len(tasks) + 1) for c in itertools.combinations(tasks, k)]


def table6(spec: dict, prefix):
    import pandas as pd

    from advss import protocol as P
    from advss.io import read_json
    from advss.report import aggregate, autoattack_note, drop_empty, result_columns, seeds_phrase, write_table
    from advss.robustness import autoattack_ensemble_column
    from advss.transfer import scenario

    rows = []
    for members in member_sets(spec["tasks"]):
        for seed in spec["seeds"]:
            r = read_json(f"{spec['run_dir']}/ensembles/{members}/seed{seed}.json")
            aa = autoattack_ensemble_column(spec["run_dir"], members.split("+"), seed)  # where it ran
            rows.append({"members": members, "seed": seed, "ta": 100 * r["ta"], "ra": 100 * r["ra"],
                         "ra_aa": float("nan") if aa is None else aa})
    agg = aggregate(pd.DataFrame(rows), ["members"], ["ta", "ra", "ra_aa"])
    paper = [P.PAPER_TABLE6.get(m, (None, None)) for m in agg["members"]]
    agg["paper_ta"], agg["paper_ra"] = zip(*paper)
    display = pd.DataFrame({"Ensemble": [" + ".join(P.TASK_LABEL[t] for t in m.split("+")) for m in agg["members"]],
                            **result_columns(agg)})
    aa_note = autoattack_note(display, spec.get("autoattack_n"))
    agg = drop_empty(agg)
    n = int(agg["n_seeds"].min())
    caption = (f"Table 6 ({spec['run']}): ensembles of ({','.join(scenario(spec))}) models (averaged softmax); test TA and RA under "
               f"white-box PGD-{spec['eval_steps']} against the averaged output (%), "
               f"{seeds_phrase(n)}; paper values (CIFAR-10, ResNet-50) beside.{aa_note} config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg
