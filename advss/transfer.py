"""Transfer attacks between fine-tuned models (the data of Table 4 and Figure 5,
which advss.report.transfer builds).

`python -m advss transfer`: PGD (the threat's eval steps) crafted on one source model
over the test set, then evaluated on every target model; per-example success vectors
are saved. Success on a target = the target misclassifies the adversarial image, and
ASR = successes / all test images, so the source's own column is 1 − its RA: the
examples are drawn exactly as `advss.evaluate` draws them (same per-batch generators).
"""
from __future__ import annotations

import time

import numpy as np

from advss import data as D
from advss.attacks import Threat
from advss.evaluate import craft, evaluate, fp32, load_classifier, prepare_model, test_split
from advss.io import AdvssError, pick_device, provenance, save_npz, set_deterministic, write_json


def run(spec, data_path, source_path, target_paths, out_npz, out_json, device="auto"):
    """Craft on `source_path`, evaluate on each of `target_paths` (in the order of spec['targets'])."""
    if len(target_paths) != len(spec.get("targets", [])):
        raise AdvssError(f"--targets gives {len(target_paths)} checkpoints but spec['targets'] names "
                         f"{len(spec.get('targets', []))}")
    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    x, y = test_split(data, spec.get("n_examples"))
    threat = Threat.from_cfg(spec["threat"], "eval_steps")
    bs, seed = int(spec.get("batch_size", 256)), int(spec.get("seed", 0))
    source, task = load_classifier(source_path, spec["model"], data["num_classes"], dev)
    source = prepare_model(source, spec, dev)
    with fp32(dev):
        x_adv = craft(source, task, x, y, threat, bs, seed)
    success, preds = [], []
    for path in target_paths:
        target, _ = load_classifier(path, spec["model"], data["num_classes"], dev)
        target = prepare_model(target, spec, dev)
        with fp32(dev):
            ev = evaluate(target, task, x_adv, y, None, bs, seed)
        success.append(~ev["clean"].numpy().astype(bool))
        preds.append(ev["pred_clean"].numpy())
    success = np.stack(success)
    save_npz(out_npz, y=y.cpu().numpy(), source=np.array(spec["source"]), targets=np.array(spec["targets"]),
             success=success, pred=np.stack(preds))
    res = {"source": spec["source"], "n": int(len(y)), "attack": f"pgd{threat.steps}-{threat.norm}", "eval_precision": "fp32",
           "asr": {t: float(s.mean()) for t, s in zip(spec["targets"], success)}}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, source=str(source_path),
                                                          targets=[str(p) for p in target_paths])})
    return res
