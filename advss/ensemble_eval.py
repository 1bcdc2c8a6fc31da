"""Ensembles of fine-tuned models (the data of Table 6, which advss.report.ensembles
builds): the members' softmax outputs averaged,
evaluated clean and under white-box PGD against that averaged output.

`python -m advss ensemble-eval`: the ensemble is one module whose output is the log
of the averaged softmax, so the ordinary classification loss on it is the NLL of the
averaged prediction, and `advss.evaluate.evaluate` attacks and scores it exactly as it
does a single model (same examples, same generators).
"""
from __future__ import annotations

import time

from advss import data as D
from advss.attacks import Threat
from advss.evaluate import (evaluate, fp32, load_classifier, prepare_model, save_per_example, softmax_average,
                            test_split)
from advss.io import pick_device, provenance, set_deterministic, write_json


def run(spec, data_path, model_paths, out_json, out_npz, device="auto"):
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
    with fp32(dev):
        ev = evaluate(model, task, x, y, threat, int(spec.get("batch_size", 256)), int(spec.get("seed", 0)))
    save_per_example(out_npz, y, ev)
    res = {"members": spec.get("members"), "ta": float(ev["clean"].mean()), "ra": float(ev["adv"].mean()),
           "n": int(len(y)), "attack": f"pgd{threat.steps}-{threat.norm} on the averaged softmax",
           "eval_precision": "fp32"}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, models=[str(p) for p in model_paths])})
    return res
