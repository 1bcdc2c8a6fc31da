"""Transfer attacks (Table 4, Figure 5) and ensembles of fine-tuned models (Table 6):
unit properties on two tiny trained classifiers, then the workflow's real outputs."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, TINY_MODEL, train_spec

from advss import data as D
from advss.attacks import Threat
from advss.protocol import member_sets
from advss.evaluate import softmax_average
from advss.evaluate import load_classifier
from advss.evaluate import test_split as first_test_images  # not "test_*": pytest would collect it

EVAL = {"model": TINY_MODEL, "threat": {"eps": "8/255", "step": "2/255", "train_steps": 2, "eval_steps": 3},
        "seed": 0, "deterministic": True, "batch_size": 32, "n_examples": 64}


@pytest.fixture(scope="module")
def two_models(tiny_data, tmp_path_factory):
    """Two classifiers trained (standard, 4 epochs) from different seeds."""
    from advss.train import train

    out = tmp_path_factory.mktemp("models")
    paths = []
    for seed in (0, 1):
        d = out / f"m{seed}"
        train(train_spec(seed=seed, epochs=4, eval_ra=False, val_max=8), tiny_data, d / "model.pt", d / "metrics.csv",
              d / "meta.json", log=lambda m: None)
        paths.append(d / "model.pt")
    return paths


def test_softmax_average_is_the_mean_of_the_members_softmax():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 4), torch.nn.Linear(5, 4)
    x = torch.randn(7, 5)
    ens = softmax_average([a, b])
    assert torch.allclose(torch.softmax(ens(x), -1), (torch.softmax(a(x), -1) + torch.softmax(b(x), -1)) / 2, atol=1e-6)
    assert torch.equal(softmax_average([a])(x), a(x))


def test_member_sets_are_the_pairs_and_the_triple():
    assert member_sets(["selfie", "rotation", "jigsaw"]) == [
        "jigsaw+rotation", "jigsaw+selfie", "rotation+selfie", "jigsaw+rotation+selfie"]


def test_transfer_diagonal_and_one_member_ensemble_match_evaluate(tiny_data, two_models, tmp_path):
    """The source's own success vector is exactly 1 − its evaluated RA, and a one-member
    ensemble is exactly its member (same examples, same generators)."""
    from advss.ensemble_eval import run as ens_run
    from advss.evaluate import run as eval_run
    from advss.io import load_npz
    from advss.transfer import run as xfer_run

    a, b = two_models
    ev = eval_run(EVAL, tiny_data, a, tmp_path / "a.json", tmp_path / "a.npz", "cpu")
    spec = {**EVAL, "source": "a", "targets": ["a", "b"]}
    res = xfer_run(spec, tiny_data, a, [a, b], tmp_path / "x.npz", tmp_path / "x.json", "cpu")
    z, e = load_npz(tmp_path / "x.npz"), load_npz(tmp_path / "a.npz")
    assert np.array_equal(z["success"][0], ~e["correct_adv"])
    assert res["asr"]["a"] == pytest.approx(1 - ev["ra"], abs=1e-6)  # ev["ra"] is a float32 mean
    assert z["success"].shape == (2, EVAL["n_examples"])
    one = ens_run({**EVAL, "members": "a"}, tiny_data, [a], tmp_path / "e.json", tmp_path / "e.npz", "cpu")
    assert (one["ta"], one["ra"]) == (ev["ta"], ev["ra"])
    assert np.array_equal(load_npz(tmp_path / "e.npz")["correct_adv"], e["correct_adv"])


def test_white_box_pgd_on_the_ensemble_beats_a_transferred_attack(tiny_data, two_models):
    from advss.evaluate import craft, evaluate

    data = D.load(tiny_data, "cpu")
    x, y = first_test_images(data, None)                     # all 100 test images
    threat = Threat(eps=16 / 255, step=4 / 255, steps=10)    # a strong attack: the tiny models are weak
    (a, task), (b, _) = (load_classifier(p, TINY_MODEL, data["num_classes"], "cpu") for p in two_models)
    ens = softmax_average([a, b]).eval()
    white = evaluate(ens, task, x, y, threat, 32)
    x_adv = craft(a, task, x, y, threat, 32)                 # crafted on one member only
    transferred = evaluate(ens, task, x_adv, y, None, 32)
    assert float(white["clean"].mean()) > float(white["adv"].mean())
    assert float(white["adv"].mean()) < float(transferred["clean"].mean())


# ------------------------------------------------------------------ the workflow, real outputs
@pytest.mark.slow
def test_workflow_tables_4_5_6_and_figure_5(mini_run):
    """Tables 4–6 and Figure 5 on the mini config; Table 4's diagonal is 1 − RA of the
    (P3,F4) models' evaluations (Table 3's rows) on the same examples, and a one-member
    ensemble job reproduces its member's evaluation."""
    import pandas as pd

    from advss.io import load_npz

    tmp_path = mini_run
    run = tmp_path / "results" / "mini"
    targets = [f"results/mini/tables/table{n}.{e}" for n in (4, 5, 6) for e in ("csv", "md", "tex")]
    targets += ["results/mini/figures/figure5.png", "results/mini/figures/figure5.pdf"]
    one = "results/mini/ensembles/rotation/seed0.json"  # a one-member ensemble, not part of `all`
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "-d", str(tmp_path),
           one, "-c1", "--configfile", str(ROOT / "tests" / "configs" / "mini.yaml")]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    for t in targets + [one]:
        assert (tmp_path / t).stat().st_size > 0, t
    t4 = pd.read_csv(run / "tables" / "table4.csv")
    assert len(t4) == 9
    for task in ("rotation", "jigsaw", "selfie"):
        test = json.loads((run / "finetune" / f"{task}-adv" / "full-adv" / "seed0" / "test.json").read_text())
        diag = t4[(t4["target"] == task) & (t4["source"] == task)]["asr"].item()
        assert diag == pytest.approx(100 * (1 - test["ra"]), abs=0.006)  # a float32 mean; the CSV to two decimals
        z = load_npz(run / "transfer" / f"{task}-adv" / "full-adv" / "seed0.npz")
        own = list(z["targets"]).index(f"{task}-adv")
        assert np.array_equal(z["success"][own], ~load_npz(run / "finetune" / f"{task}-adv" / "full-adv" / "seed0"
                                                           / "eval" / "pgd.npz")["correct_adv"])
    one = json.loads((run / "ensembles" / "rotation" / "seed0.json").read_text())
    member = json.loads((run / "finetune" / "rotation-adv" / "full-adv" / "seed0" / "test.json").read_text())
    assert (one["ta"], one["ra"]) == (member["ta"], member["ra"])
    t5 = pd.read_csv(run / "tables" / "table5.csv")
    assert list(t5["model"]) == ["Rotation", "Jigsaw", "Selfie", "AP+SE", "AP+DPE (+α·g, Eq. 3)",
                                 "AP+DPE (−α·g, diversity)"]
    assert t5["paper_ra"].notna().all()
    t6 = pd.read_csv(run / "tables" / "table6.csv")
    assert list(t6["members"]) == member_sets(["rotation", "jigsaw", "selfie"])
    dpe = json.loads((run / "pretrain" / "ensemble-dpe" / "seed0" / "meta.json").read_text())
    assert dpe["spec"]["objective"]["alpha"] == 0.1 and dpe["spec"]["task"] == "ensemble"
    neg = json.loads((run / "pretrain" / "ensemble-dpe-neg" / "seed0" / "meta.json").read_text())
    assert dpe["spec"]["objective"]["sign"] == 1 and neg["spec"]["objective"]["sign"] == -1
