"""The successors' table and claim (issue 20) from result files: the numbers are the files',
the published figures stand beside with their sources, and the claim compares the best of
each generation by AutoAttack RA."""
import numpy as np
import pandas as pd

from advss import protocol as P
from advss.claims import successor_claims
from advss.io import save_npz, write_json
from advss.report.successors import table_robust_ssl

AA = {"rotation-adv": 0.30, "jigsaw-adv": 0.25, "acl": 0.35}


def _fake_run(root, seeds=(0,)):
    for src, ft in [("rotation-adv", "full-adv"), ("jigsaw-adv", "full-adv"), ("acl", "full-adv"),
                    ("acl", "partial-std")]:
        for s in seeds:
            d = root / "finetune" / src / ft / f"seed{s}"
            write_json(d / "test.json", {"ta": 0.5 + 0.01 * s + (0.1 if src == "acl" else 0), "ra": 0.2, "n": 64})
            rsb = src == "acl"  # RSB's settings for the contrastive rows, the 2020 split for the tasks'
            job = {"objective": {"kind": "trades", "trades_beta": 6.0} if ft == "full-adv" else {"kind": "standard"},
                   "threat": {"train_steps": 10}, "select_by": "last" if rsb else "val_ra",
                   **({"train_data": "all", "head_init": "zero", "dual_bn": ft == "full-adv"} if rsb else {})}
            write_json(d / "meta.json", {"epochs_to_best": 3, "epochs_run": 4, "spec_hash": "x", "spec": job})
            if ft == "full-adv":
                write_json(d / "eval" / "autoattack.json", {"ra": AA[src]})
                rng = np.random.default_rng(1)
                hit = rng.random(64) < AA[src] + 0.3 * (src == "acl")
                save_npz(d / "eval" / "autoattack.npz", y=np.arange(64) % 10, correct_adv=hit)
            write_json(root / "pretrain" / src / f"seed{s}" / "meta.json",
                       {"train_seconds": 7200.0, "fast": {"bf16": src == "acl"}})


def _spec(root, **over):
    return {"run": "t", "run_dir": str(root), "tasks": ["rotation", "jigsaw"], "seeds": [0], "eval_steps": 20,
            "config_hash": "h", "autoattack_n": 64, "robust_ssl_methods": ["acl"], "robust_ssl_finetune": ["F4", "F1"],
            "arch": "resnet18", **over}


def test_table_has_the_results_and_the_published_figures(tmp_path):
    _fake_run(tmp_path)
    table_robust_ssl(_spec(tmp_path), tmp_path / "robust_ssl")
    csv = pd.read_csv(tmp_path / "robust_ssl.csv")
    acl = csv[(csv["key"] == "acl") & (csv["scenario"] == "(P3,F4)")].iloc[0]
    assert acl["ta"] == 60.0 and acl["ra_aa"] == 35.0 and acl["pretrain_hours"] == 2.0
    assert acl["successor_name"] == "AFF"
    assert (acl["published_clean"], acl["published_aa"]) == P.PUBLISHED_ROBUST_SSL["acl"][:2]
    assert "RobustSSL_Benchmark" in acl["published_source"]
    slf = csv[(csv["key"] == "acl") & (csv["scenario"] == "(P3,F1)")].iloc[0]
    assert slf["successor_name"] == "SLF" and pd.isna(slf["published_aa"])  # published figures are AFF's only
    rot = csv[csv["key"] == "rotation"].iloc[0]
    assert rot["paper_ra"] == P.PAPER_TABLE3["rotation"]["P3F4"][1]
    chen = csv[csv["key"] == "chen2020"].iloc[0]
    assert chen["published_aa"] == 51.56 and "RobustBench" in chen["published_source"]
    published_only = set(csv["key"][csv["model"].str.endswith("(published only)")])
    assert published_only == {"dynacl", "dynacl++", "chen2020"}  # every published figure, trained here or not
    # each row says how it was fine-tuned and on which data, with which selection
    assert acl["fine_tuning"] == "TRADES β=6, dual BN, zero head" and acl["data_selection"] == "all training images, last epoch"
    assert slf["fine_tuning"] == "CE, zero head"
    assert (rot["fine_tuning"], rot["data_selection"]) == ("TRADES β=6", "fit split, best val. RA")
    md = (tmp_path / "robust_ssl.md").read_text()
    assert "SLF = F1" in md and "AFF = F4" in md and "TRADES" in md and "DynACL++" in md
    assert "Data, selection" in md and "bf16" in md and "@319a200" in md
    assert "starts its attack from N(0, 0.001²) noise" in md  # a kept difference from RSB, named


def test_successor_claim_compares_the_best_of_each_generation(tmp_path):
    _fake_run(tmp_path)
    (row,) = successor_claims(_spec(tmp_path))
    assert row["task"] == "ACL (DS) vs Rotation" and row["relation"] == ">="
    assert row["a"] == {0: 35.0} and row["b"] == {0: 30.0}  # the best task by AutoAttack RA, not jigsaw
    y, hits = row["hits_a"](0)
    assert len(y) == 64 and hits.dtype == bool
    assert successor_claims(_spec(tmp_path, robust_ssl_methods=["simclr"])) == []  # no P3 method: no row
    assert successor_claims({k: v for k, v in _spec(tmp_path).items() if k != "robust_ssl_methods"}) == []


def test_the_caption_names_robustssl_benchmarks_protocol_only_where_the_rows_ran_it(tmp_path):
    _fake_run(tmp_path)
    table_robust_ssl(_spec(tmp_path), tmp_path / "rsb")
    assert "as RobustSSL_Benchmark @319a200 runs them" in (tmp_path / "rsb.md").read_text()
    d = tmp_path / "finetune" / "acl" / "full-adv" / "seed0"  # the fashion-mnist-cpu record's ACL: Madry AT, fit split
    meta = {"epochs_to_best": 3, "epochs_run": 4, "spec_hash": "x",
            "spec": {"objective": {"kind": "adversarial"}, "threat": {"train_steps": 3}, "select_by": "val_ra"}}
    write_json(d / "meta.json", meta)
    table_robust_ssl(_spec(tmp_path), tmp_path / "own")
    md = (tmp_path / "own.md").read_text()
    assert "not as RobustSSL_Benchmark runs them" in md and "as RobustSSL_Benchmark @319a200 runs them" not in md
