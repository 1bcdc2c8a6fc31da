"""Test-set evaluation of fine-tuned models: TA, PGD RA and per-example vectors
(clean/adversarial correctness and predictions) that transfer attacks and Venn
diagrams are computed from."""
from __future__ import annotations

import time

import numpy as np
import torch

from advss import data as D
from advss.attacks import Threat
from advss.io import pick_device, provenance, save_npz, set_deterministic, write_json
from advss.models import load_checkpoint
from advss.train import apply_fast, build, evaluate, fast_settings


def load_classifier(path, model_cfg, num_classes, device):
    ck = load_checkpoint(path, model_cfg)
    model, task = build({"task": "classification", "model": model_cfg}, num_classes)
    model.load_state_dict(ck["state_dict"])
    return model.to(device).eval(), task


def test_split(data, n_examples=None):
    x, y = data["test"]
    return (x[:n_examples], y[:n_examples]) if n_examples else (x, y)


def run(spec: dict, data_path, model_path, out_json, out_npz, device="auto"):
    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    model, task = load_classifier(model_path, spec["model"], data["num_classes"], dev)
    x, y = test_split(data, spec.get("n_examples"))
    threat = Threat.from_cfg(spec["threat"], "eval_steps")
    model = apply_fast(model, dev, fast_settings(spec, dev))
    # fp32 whatever the training precision: the reported TA/RA (and model selection's
    # counterpart, the test numbers) must not depend on a speed setting
    ev = evaluate(model, task, x, y, threat, int(spec.get("batch_size", 256)), int(spec.get("seed", 0)), bf16=False)
    save_npz(out_npz, y=y.cpu().numpy(), correct_clean=ev["clean"].numpy().astype(bool),
             correct_adv=ev["adv"].numpy().astype(bool), pred_clean=ev["pred_clean"].numpy(),
             pred_adv=ev["pred_adv"].numpy())
    res = {"ta": float(ev["clean"].mean()), "ra": float(ev["adv"].mean()), "n": int(len(y)),
           "attack": f"pgd{threat.steps}-{threat.norm}", "eps": threat.eps, "eval_precision": "fp32"}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, model=str(model_path))})
    return res


def summary(npz: dict) -> dict:
    return {"ta": float(np.mean(npz["correct_clean"])), "ra": float(np.mean(npz["correct_adv"]))}


@torch.no_grad()
def softmax_average(models, x):
    return torch.stack([torch.softmax(m(x), -1) for m in models]).mean(0)
