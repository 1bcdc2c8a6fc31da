"""Ablations: random-smoothing pretraining never attacks, the one-shot baseline's loss is
the weighted sum it claims and saves a plain classifier, pools are nested seeded subsets,
and the workflow plans Tables 7, 8 and the baseline."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import ROOT, TINY_MODEL, train_spec


def _forbid_attack(monkeypatch):
    """Make every reachable PGD entry point raise."""
    import advss.attacks
    import advss.objectives
    import advss.evaluate

    def boom(*a, **k):
        raise AssertionError("the attack was called")

    for mod in (advss.attacks, advss.objectives, advss.evaluate):
        monkeypatch.setattr(mod, "pgd", boom)


def _smooth_spec():
    return train_spec(stage="pretrain", task="rotation", objective={"kind": "smoothing", "sigma": 0.25},
                      eval_ra=False, select_by="last", epochs=1, augment=False)


def test_noise_pretraining_never_calls_the_attack(tiny_data, tmp_path, monkeypatch):
    from advss.train import train

    _forbid_attack(monkeypatch)
    state = train(_smooth_spec(), tiny_data, tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "m.json", log=lambda m: None)
    assert state["epoch"] == 1 and (tmp_path / "m.pt").exists()
    # the same guard does catch an adversarial objective (so the test above can fail)
    adv = {**_smooth_spec(), "objective": {"kind": "adversarial", "mix": "clean+adv"}}
    with pytest.raises(AssertionError, match="attack was called"):
        train(adv, tiny_data, tmp_path / "a.pt", tmp_path / "a.csv", tmp_path / "a.json", log=lambda m: None)


def test_smoothing_perturbs_inputs_with_the_configured_sigma():
    from advss.objectives import smoothing
    from advss.pretext import Classification

    seen = []

    class Spy(Classification):
        def loss(self, model, inputs, targets):
            seen.append(inputs)
            return torch.zeros(len(inputs)), torch.zeros(len(inputs), 10)

    x = torch.full((256, 3, 8, 8), 0.5)
    smoothing(None, Spy(10), x, torch.zeros(256, dtype=torch.long), torch.Generator().manual_seed(0),
              {"sigma": 0.1}, None)
    assert abs(float((seen[0] - x).std()) - 0.1) < 0.005


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_rotaux_loss_is_the_weighted_sum(w):
    from advss.pretext.rotation import rotate
    from advss.train import build

    torch.manual_seed(0)
    model, task = build({"task": "rotaux", "pretext": {"rotaux": {"rot_weight": w}}, "model": TINY_MODEL}, 10)
    model.eval()
    x, y = torch.rand(8, 3, 32, 32), torch.arange(8) % 10
    inputs, targets = task.make_batch(x, y, torch.Generator().manual_seed(1))
    k = targets[:, 1]
    assert torch.equal(inputs[:8], x) and torch.equal(inputs[8:], rotate(x, k))
    assert sorted(k.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]  # balanced rotations
    loss, logits = task.loss(model, inputs, targets)
    cls = model(x)                                          # the model's own forward = class logits
    rot = model.head.rot(model.features(rotate(x, k)))
    want = F.cross_entropy(cls, y, reduction="none") + w * F.cross_entropy(rot, k, reduction="none")
    assert torch.allclose(loss, want, atol=1e-5)
    assert torch.allclose(logits, cls, atol=1e-5)


def test_rotaux_checkpoint_loads_as_a_classifier(tiny_data, tmp_path):
    from advss.evaluate import load_classifier
    from advss.train import train

    spec = train_spec(task="rotaux", pretext={"rotaux": {"rot_weight": 0.5}}, epochs=1, eval_ra=True,
                      objective={"kind": "adversarial", "mix": "adv"}, select_by="val_ra")
    train(spec, tiny_data, tmp_path / "m.pt", tmp_path / "m.csv", tmp_path / "m.json",
          out_best_ta=tmp_path / "ta.pt", log=lambda m: None)
    model, _ = load_classifier(tmp_path / "m.pt", TINY_MODEL, 10, "cpu")  # strict load: no rotation keys left
    assert model.head.weight.shape == (10, model.trunk.out_dim)
    load_classifier(tmp_path / "ta.pt", TINY_MODEL, 10, "cpu")


def test_pools_are_nested_seeded_subsets_with_the_runs_validation(tiny_data, tmp_path):
    from advss import data as D
    from advss.ablations import build_pool

    full = D.load(tiny_data, "cpu")
    cfg = {"source": "train", "seed": 3}
    build_pool(cfg, 40, tiny_data, tmp_path / "p40.pt")
    build_pool(cfg, 100, tiny_data, tmp_path / "p100.pt")
    small, big = D.load(tmp_path / "p40.pt", "cpu"), D.load(tmp_path / "p100.pt", "cpu")
    assert len(small["fit"][0]) == 40 and len(big["fit"][0]) == 100
    rows = lambda x: {bytes(r.numpy()) for r in x}  # noqa: E731
    assert rows(small["fit"][0]) <= rows(big["fit"][0]) <= rows(full["fit"][0])
    assert torch.equal(small["val"][0], full["val"][0])
    with pytest.raises(Exception, match="larger than"):
        build_pool(cfg, 10_000, tiny_data, tmp_path / "too_big.pt")


def test_pool_from_a_user_array(tiny_data, tmp_path):
    from advss import data as D
    from advss.ablations import build_pool
    from advss.io import AdvssError

    arr = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "pool.npy", arr)
    build_pool({"source": "npy", "path": str(tmp_path / "pool.npy")}, 20, tiny_data, tmp_path / "p.pt")
    fit = D.load(tmp_path / "p.pt", "cpu")["fit"][0]
    src = {bytes(a.transpose(2, 0, 1).copy()) for a in arr}
    assert fit.shape == (20, 3, 32, 32) and all(bytes(r.numpy()) in src for r in fit)
    np.save(tmp_path / "bad.npy", arr[:, :16])
    with pytest.raises(AdvssError, match="expected an N×32×32×3"):
        build_pool({"source": "npy", "path": str(tmp_path / "bad.npy")}, 5, tiny_data, tmp_path / "b.pt")


def test_pool_from_a_user_image_folder(tiny_data, tmp_path):
    """An unlabeled folder (nested, mixed sizes) becomes a pool of 32×32 images drawn from it."""
    from PIL import Image

    from advss import data as D
    from advss.ablations import build_pool

    means = set()
    for i in range(12):
        sub = tmp_path / "unlabeled" / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40 + i, 48, 3), 10 * i, dtype=np.uint8)).save(sub / f"{i}.png")
        means.add(10 * i)
    (tmp_path / "unlabeled" / "notes.txt").write_text("not an image")
    build_pool({"source": "folder", "path": str(tmp_path / "unlabeled")}, 8, tiny_data, tmp_path / "p.pt")
    fit = D.load(tmp_path / "p.pt", "cpu")["fit"][0]
    assert fit.shape == (8, 3, 32, 32) and fit.dtype == torch.uint8
    drawn = [int(img.float().mean().round()) for img in fit]
    assert set(drawn) <= means and len(set(drawn)) == 8          # distinct images of the folder


def test_workflow_plans_the_ablations(tmp_path):
    import re

    from test_workflow import job_counts, snakemake

    p = snakemake("-n", "table7", "table8", "table_rotaux", "figure_pool", "--configfile", ROOT / "config/demo.yaml",
                  cwd=tmp_path)
    counts = job_counts(p.stdout)
    abl = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["ablations"]
    sizes, pool_tasks, smooth = abl["pool"]["sizes"], abl["pool"]["tasks"], abl["smoothing"]["tasks"]
    n_ablation = len(sizes) * len(pool_tasks) + len(smooth)                            # pools + smoothing
    assert counts["prepare_pool"] == len(sizes)                                        # one pool per size
    # one `pretrain` rule: the ablation pretrainings and rotation-adv (P3)
    assert counts["pretrain"] == n_ablation + 1
    assert len(re.findall(r"Pretraining \w+-(?:adv-n\d+|smooth) ", p.stdout)) == n_ablation
    assert "full-adv-rotaux" in p.stdout and "rotation-smooth" in p.stdout and f"rotation-adv-n{sizes[0]}" in p.stdout
    (tmp_path / "config").symlink_to(ROOT / "config")  # the class map is relative to the run directory
    for cfg in ("cifar100", "rimagenet"):
        counts = job_counts(snakemake("-n", "--configfile", ROOT / f"config/{cfg}.yaml", cwd=tmp_path).stdout)
        assert counts["finetune"] == 20 + 1 and counts["pretrain"] == 6  # Table 3's and the matched baseline
