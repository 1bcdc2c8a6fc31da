"""DynACL++ (PKU-ML/DYNACL @7d143db: assign_label.py, LPAFT.py, LPAFT_AFF.py): pseudo-labels by
k-means on the pretrained features, then linear probing before adversarial fine-tuning, both
carrying the clean BN copy to the dual-BN AFF."""
import pytest
import torch

from advss import protocol as P
from advss.io import AdvssError
from advss.models import load_checkpoint
from advss.pseudolabel import features, kmeans, purity, relabel, route_state, run
from advss.train import setup, train
from conftest import TINY_MODEL, train_spec

QUIET = {"device": "cpu", "log": lambda m: None}


def _same_partition(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two labellings are the same clustering up to renaming the clusters."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_recovers_a_planted_clustering_up_to_permutation():
    """Five well-separated Gaussian blobs of different sizes in 16 dimensions: every point is
    put with its own blob, whatever names the clusters get."""
    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(5, 16, generator=g)
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate((40, 15, 60, 25, 30))])
    x = centres[truth] + torch.randn(len(truth), 16, generator=g)
    perm = torch.randperm(len(x), generator=g)
    labels, c, inertia = kmeans(x[perm], 5, seed=1, restarts=3)
    assert _same_partition(labels, truth[perm]) and purity(labels, truth[perm]) == 1.0
    assert c.shape == (5, 16) and inertia == pytest.approx(float(((x[perm] - c[labels]) ** 2).sum()), rel=1e-4)
    with pytest.raises(ValueError):
        kmeans(x, 0)


def test_kmeans_keeps_the_best_restart():
    """More restarts never end at a higher inertia (the best run by inertia is kept)."""
    x = torch.randn(200, 4, generator=torch.Generator().manual_seed(3))
    one = kmeans(x, 8, seed=0, restarts=1)[2]
    many = kmeans(x, 8, seed=0, restarts=6)[2]
    assert many <= one + 1e-6


def _dual_pretraining(tiny_data, tmp_path):
    pre = train_spec(stage="pretrain", task="contrastive", pretext={"contrastive": {"dual_bn": True}},
                     objective={"kind": "acl"}, augment=False, select_by="last", epochs=1)
    train(pre, tiny_data, tmp_path / "p.pt", tmp_path / "p.csv", tmp_path / "p.json", **QUIET)
    return tmp_path / "p.pt"


def test_pseudolabels_cluster_the_pretrained_features_through_the_clean_bn(tiny_data, tmp_path):
    """The clustering job's labels are k-means of the trunk's eval-mode features through the
    clean BN copy (assign_label.py's 'normal' route), of every training image in fit-then-val
    order; the loop then trains on them in place of the true labels."""
    from advss import data as D
    from advss.pseudolabel import all_training

    init = _dual_pretraining(tiny_data, tmp_path)
    ck = load_checkpoint(init)
    spec = {"model": TINY_MODEL, "seed": 0, "clusters": 4, "restarts": 2}
    summary = run(spec, tiny_data, init, tmp_path / "l.pt", tmp_path / "l.json", device="cpu")
    lab = torch.load(tmp_path / "l.pt")
    data = D.load(tiny_data, "cpu")
    x, _ = all_training(data)
    clean = features(ck, TINY_MODEL, x, "clean")
    assert _same_partition(lab["labels"], kmeans(clean, 4, seed=0, restarts=2)[0])
    adv = features(ck, TINY_MODEL, x, "adv")  # the other copy gives other features
    assert not torch.allclose(clean, adv)
    assert len(lab["labels"]) == summary["n"] == 300 and sum(summary["sizes"]) == 300
    key = "trunk.stem.1.running_mean"
    assert torch.equal(route_state(ck, "clean")[key], ck["bn_copies"]["clean"][key])
    re = relabel(data, tmp_path / "l.pt")
    assert torch.equal(torch.cat([re["fit"][1], re["val"][1]]), lab["labels"]) and re["num_classes"] == 4
    job = setup(train_spec(), tiny_data, init=init, labels=tmp_path / "l.pt", **QUIET)
    assert job.model.head.out_features == 4 and torch.equal(job.fit[1], lab["labels"][:270])
    torch.save({**lab, "n_fit": 10}, tmp_path / "bad.pt")
    with pytest.raises(AdvssError, match="split"):
        relabel(data, tmp_path / "bad.pt")


def test_lp_trains_the_probe_before_aft_trains_the_trunk(tiny_data, tmp_path):
    """LP (LPAFT.py's train_head): the head moves, the trunk and its BN statistics do not. AFT
    then starts from LP's probed head (not a zeroed or fresh one) and trains the trunk. Both
    exports carry the clean BN copy untouched and the adversarial copy as trained, so the
    dual-BN AFF starts from both."""
    init = _dual_pretraining(tiny_data, tmp_path)
    run({"model": TINY_MODEL, "seed": 0, "clusters": 4, "restarts": 1}, tiny_data, init, tmp_path / "l.pt",
        tmp_path / "l.json", device="cpu")
    pre = load_checkpoint(init)
    base = train_spec(threat={"eps": "8/255", "step": "2/255", "train_steps": 2, "eval_steps": 1,
                              "bn_mode_when_crafting": "eval"}, epochs=1)
    lp_settings = {"epochs": 1, "batch_size": 64, "optim": {"lr": 0.05, "momentum": 0.9, "schedule": "constant"},
                   "data": "all", "select": "last", "head_init": "zero"}
    lp = {**base, **P.dynaclpp_stage_keys("lp", lp_settings)}
    train(lp, tiny_data, tmp_path / "lp.pt", tmp_path / "lp.csv", tmp_path / "lp.json", init=init,
          labels=tmp_path / "l.pt", **QUIET)
    out = load_checkpoint(tmp_path / "lp.pt")
    trunk = [k for k in out["state_dict"] if k.startswith("trunk.")]
    assert all(torch.equal(out["state_dict"][k], pre["state_dict"][k]) for k in trunk)  # frozen, BN stats too
    assert out["state_dict"]["head.weight"].abs().sum() > 0  # the probe learnt from its zeroed start
    aft_settings = {**lp_settings, "objective": "trades", "trades_beta": 6.0, "head_init": "zero"}
    aft = {**base, **P.dynaclpp_stage_keys("aft", aft_settings)}
    assert aft["head_init"] == "init" and aft["objective"]["kind"] == "trades"
    job = setup(aft, tiny_data, init=tmp_path / "lp.pt", labels=tmp_path / "l.pt", **QUIET)
    assert torch.equal(job.model.head.weight.detach(), out["state_dict"]["head.weight"])  # LP's probe
    assert all(p.requires_grad for p in job.model.parameters())
    train(aft, tiny_data, tmp_path / "aft.pt", tmp_path / "aft.csv", tmp_path / "aft.json", init=tmp_path / "lp.pt",
          labels=tmp_path / "l.pt", **QUIET)
    fin = load_checkpoint(tmp_path / "aft.pt")
    assert any(not torch.equal(fin["state_dict"][k], pre["state_dict"][k]) for k in trunk if "conv" in k)
    key = "trunk.stem.1.running_mean"
    for ck in (out, fin):  # the clean copy as pretrained; the adversarial copy is the plain weights
        assert torch.equal(ck["bn_copies"]["clean"][key], pre["bn_copies"]["clean"][key])
        assert torch.equal(ck["bn_copies"]["adv"][key], ck["state_dict"][key])
    assert not torch.equal(fin["bn_copies"]["adv"][key], pre["bn_copies"]["adv"][key])  # AFT trained it
    with pytest.raises(AdvssError, match="init"):
        setup({**aft}, tiny_data, labels=tmp_path / "l.pt", **QUIET)


def test_the_budget_of_dynaclpp_includes_its_lp_and_aft(tmp_path):
    """A DynACL++ model's passes per image sum its fine-tuning, its AFT, its LP and DynACL's
    pretraining (protocol.pretrain_chain), each passes_per_image × the epochs it ran."""
    from advss.io import write_json
    from advss.results import training_passes

    threat = {"train_steps": 10}
    jobs = {"finetune/dynacl++/full-adv/seed0": ({"objective": {"kind": "trades"}, "threat": threat}, 25),
            "pretrain/dynacl++/seed0": ({"objective": {"kind": "trades"}, "threat": threat}, 25),
            "pretrain/dynacl++-lp/seed0": ({"objective": {"kind": "standard"}, "threat": threat}, 10),
            "pretrain/dynacl/seed0": ({"task": "contrastive", "objective": {"kind": "acl"},
                                       "pretext": {"contrastive": {"momentum": 0.99}}, "threat": {"train_steps": 5}},
                                      1000)}
    for d, (spec, epochs) in jobs.items():
        write_json(tmp_path / d / "meta.json", {"spec": spec, "epochs_run": epochs})
    assert training_passes(tmp_path, "dynacl++", "full-adv", 0) == 25 * 12 + 25 * 12 + 10 * 1 + 1000 * 12
    assert P.pretrain_chain("dynacl") == ["dynacl"] and P.pretrain_chain("scratch") == []


def test_robust_ssl_dry_run_chains_dynaclpp_after_dynacl():
    """config/robust-ssl.yaml's dry run: DynACL's pretraining → pseudo-labels (k-means, 10
    clusters, clean BN) → LP on them (head only, 10 epochs, lr 0.01) → AFT from LP's model and
    probed head (TRADES, 25 epochs, milestones [10, 20]) → SLF, ALF and AFF from AFT's model,
    each job reading the previous one's output."""
    import shlex

    from test_robust_ssl_workflow import robust_ssl_dry

    out, jobs = robust_ssl_dry()
    assert jobs["pseudolabel"] == 1 and jobs["dynaclpp_stage"] == 2
    key = "python -m advss "
    cmds = [shlex.split(line[line.index(key):]) for line in out.splitlines() if key in line]

    def flag(a, f):
        return a[a.index(f) + 1] if f in a else None

    def spec(a):
        return __import__("json").loads(flag(a, "--spec"))

    made = {flag(a, "--out-model") or flag(a, "--out"): a for a in cmds}
    run_dir = "results/cifar10-robust-ssl"
    pl = made[f"{run_dir}/pseudolabels/dynacl++/seed0/labels.pt"]
    assert pl[3] == "pseudolabel" and flag(pl, "--model") == f"{run_dir}/pretrain/dynacl/seed0/model.pt"
    assert made[flag(pl, "--model")][3] == "pretrain" and spec(made[flag(pl, "--model")])["task"] == "contrastive"
    assert (spec(pl)["clusters"], spec(pl)["route"]) == (10, "clean")
    lp = made[f"{run_dir}/pretrain/dynacl++-lp/seed0/model.pt"]
    assert flag(lp, "--init") == flag(pl, "--model") and flag(lp, "--labels") == flag(pl, "--out")
    s = spec(lp)
    assert s["partial"] and s["partial_trains"] == "head" and s["objective"] == {"kind": "standard"}
    assert (s["epochs"], s["optim"]["lr"], s["head_init"], s["keep_bn_copies"]) == (10, 0.01, "zero", True)
    aft = made[f"{run_dir}/pretrain/dynacl++/seed0/model.pt"]
    assert flag(aft, "--init") == flag(lp, "--out-model") and flag(aft, "--labels") == flag(pl, "--out")
    s = spec(aft)
    assert not s["partial"] and s["objective"]["kind"] == "trades" and s["head_init"] == "init"
    assert (s["epochs"], s["optim"]["milestones"], s["batch_size"]) == (25, [10, 20], 512)
    fts = {ft: made[f"{run_dir}/finetune/dynacl++/{ft}/seed0/model.pt"] for ft in ("partial-std", "partial-adv", "full-adv")}
    assert all(flag(a, "--init") == flag(aft, "--out-model") and not flag(a, "--labels") for a in fts.values())
    aff = spec(fts["full-adv"])  # RSB fine-tunes DynACL++ as DynACL: its AFF dual-BN, 25 epochs, [15, 20]
    assert aff["dual_bn"] and (aff["epochs"], aff["optim"]["milestones"]) == (25, [15, 20])
    assert spec(fts["partial-std"])["objective"] == {"kind": "standard"} and spec(fts["partial-std"])["epochs"] == 25


def test_the_dynaclpp_row_is_trained_beside_its_published_figure(tmp_path):
    """In the successors' table DynACL++ is a trained (P3,F4) row with RSB's 50.34 / 81.93 beside
    it (no longer 'published only'), its hours the sum of DynACL's pretraining, LP and AFT."""
    import pandas as pd

    from advss.io import write_json
    from advss.report.successors import table_robust_ssl
    from test_successors import _fake_run, _spec

    _fake_run(tmp_path)
    d = tmp_path / "finetune" / "dynacl++" / "full-adv" / "seed0"
    write_json(d / "test.json", {"ta": 0.8, "ra": 0.5, "n": 64})
    write_json(d / "meta.json", {"epochs_to_best": 25, "epochs_run": 25, "spec_hash": "x",
                                 "spec": {"objective": {"kind": "trades", "trades_beta": 6.0}, "dual_bn": True,
                                          "threat": {"train_steps": 10}, "select_by": "last", "train_data": "all"}})
    write_json(d / "eval" / "autoattack.json", {"ra": 0.45})
    for pt, seconds in (("dynacl", 3600.0), ("dynacl++-lp", 360.0), ("dynacl++", 3240.0)):
        write_json(tmp_path / "pretrain" / pt / "seed0" / "meta.json", {"train_seconds": seconds, "fast": {"bf16": False}})
    table_robust_ssl(_spec(tmp_path, robust_ssl_methods=["acl", "dynacl++"], robust_ssl_finetune=["F4"]),
                     tmp_path / "robust_ssl")
    csv = pd.read_csv(tmp_path / "robust_ssl.csv")
    row = csv[(csv["key"] == "dynacl++") & (csv["scenario"] == "(P3,F4)")]
    assert len(row) == 1 and row.iloc[0]["model"] == "DynACL++" and row.iloc[0]["ra_aa"] == 45.0
    assert (row.iloc[0]["published_aa"], row.iloc[0]["published_clean"]) == (50.34, 81.93)
    assert row.iloc[0]["pretrain_hours"] == 2.0
    assert "dynacl++" not in set(csv["key"][csv["model"].str.endswith("(published only)")])
