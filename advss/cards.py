"""`python -m advss card`: a RobustBench-style model card and a checkpoint that plain
PyTorch loads, per fine-tuned model (issue 20).

The card holds RobustBench's model-info fields (its `model_info/<dataset>/<threat>/*.json`:
name, architecture, eps, clean_acc, autoattack_acc, additional_data, number_forward_passes,
dataset, venue, link, reported, footnote, unreliable), with the threat model, the test
images each accuracy was measured on and the AutoAttack version and budget, all copied
from the result files the card is made from. The checkpoint is a `torch.export` program
of the classifier (normalisation inside, inputs N×3×H×W in [0,1], any batch size), so
`LOAD` below — plain PyTorch, no advss — gives the logits advss computes.

RobustBench's leaderboard code (`generate_leaderboard`, `get_leaderboard_latex`) ranks the
cards by `float(autoattack_acc)`, so a card without an AutoAttack accuracy breaks it for
every model in the folder: a model that AutoAttack did not score gets no card (issue 24).
`link`, `authors`, `venue` and `reported` (the published AutoAttack accuracy of the method
under the same fine-tuning) come from the spec (config `robust_ssl.card_info`); "" where
unknown, which RobustBench's own files also use.
"""
from __future__ import annotations

import time

import torch

from advss import data as D
from advss.io import atomic_path, pick_device, provenance, read_json, write_json
from advss.models import load_classifier

LOAD = ('import torch\n'
        'model = torch.export.load("model.pt2").module()   # plain PyTorch: no advss needed\n'
        'logits = model(images)   # images: float N×3×H×W in [0, 1]; normalisation is inside')
ARCH = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "resnet-tiny": "ResNet-tiny"}


def card_fields(spec: dict, test: dict, aa: dict) -> dict:
    """The card's fields from the model's test.json (`advss evaluate`) and its
    eval/autoattack.json (`advss robustness autoattack`)."""
    if not aa:
        raise ValueError(f"{spec['name']}: no AutoAttack result, so no card (RobustBench ranks cards by "
                         "float(autoattack_acc)); turn robustness.autoattack on or robust_ssl.cards off")
    m, t = spec["model"], spec["threat"]
    arch = ARCH.get(m["arch"], m["arch"]) + ("" if m.get("width", 64) == 64 else f" (width {m['width']})")
    return {
        "name": spec["name"], "link": spec.get("link", ""), "authors": spec.get("authors", ""),
        "venue": spec.get("venue", ""), "dataset": spec["dataset"], "architecture": arch,
        "eps": str(t["eps"]), "threat_model": {"linf": "Linf", "l2": "L2"}[t.get("norm", "linf")],
        "clean_acc": f"{100 * test['ta']:.2f}",
        "autoattack_acc": f"{100 * aa['ra']:.2f}",
        "additional_data": False, "number_forward_passes": 1, "unreliable": False,
        "reported": "" if spec.get("reported") is None else f"{float(spec['reported']):.2f}",
        "footnote": spec.get("footnote", ""),
        # beyond RobustBench's fields: what each number was measured on
        "n_test_examples": {"clean": int(test["n"]), "autoattack": int(aa["n"])},
        "autoattack": {k: aa[k] for k in ("version", "implementation", "n_iter", "n_target_classes", "n_queries",
                                           "fab_n_iter", "components") if k in aa},
        "pgd_ra": f"{100 * test['ra']:.2f}", "pgd_attack": test["attack"],
        "load": LOAD,
    }


def export_program(model, example: torch.Tensor, path):
    """The classifier as a `torch.export` program with a dynamic batch dimension."""
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    ep = torch.export.export(model.eval(), (example,), dynamic_shapes={"x": {0: batch}})
    with atomic_path(path) as tmp:
        torch.export.save(ep, str(tmp))


def run(spec: dict, data_path, model_path, test_json, aa_json, out_card, out_program, device="cpu"):
    """Export the program (traced on the CPU, two test-sized images) and write the card."""
    started = time.time()
    if not aa_json:
        card_fields(spec, {}, None)  # the error that says why there is no card, before any work
    dev = pick_device(device)
    data = D.load(data_path, "cpu")
    model = load_classifier(model_path, spec["model"], data["num_classes"], "cpu")
    export_program(model, torch.rand(2, *data["test"][0].shape[1:]), out_program)
    card = card_fields(spec, read_json(test_json), read_json(aa_json))
    write_json(out_card, {**card, "provenance": provenance(spec, dev, started, model=str(model_path))})
    return card
