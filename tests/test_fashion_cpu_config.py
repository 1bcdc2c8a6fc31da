"""config/fashion-mnist-cpu.yaml (issue 13, item 8; issue 19; issue 25, item 5): it passes the
workflow's validation, its DAG is the headline comparison, the compute-matched baseline, one
successor (ACL, AFF only) and the (P1,F4) compute ladder, whose rungs sit at or just above every
pretrained method's passes per image; it keeps the paper's threat, and it dry-runs without the
dataset (prepare_data is not executed in a dry run)."""
from __future__ import annotations

import csv
import re
import subprocess
import sys

import yaml

from advss import protocol as P
from advss.protocol import TASK_LABEL
from conftest import ROOT

SNAKEFILE = ROOT / "workflow" / "Snakefile"
CONFIG = ROOT / "config" / "fashion-mnist-cpu.yaml"
RECORD = ROOT / "benchmarks" / "fashion-mnist-cpu"


def dry_run(cfg_path, cwd):
    (cwd / "config").symlink_to(ROOT / "config")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(cwd), "-n", "all_tables",
           "--configfile", str(cfg_path)]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def expected_jobs(cfg):
    n_seeds, n_tasks = len(cfg["seeds"]), len(cfg["pretrain"]["tasks"])
    methods, modes = cfg["robust_ssl"]["methods"], cfg["robust_ssl"]["finetune"]
    # the ladder's rungs other than the plain (P1,F4) and the matched baseline (both in Table 3)
    rungs = [ft for ft in P.ladder(cfg) if ft not in ("full-adv", *P.matched_baselines(cfg).values())]
    # pretraining: P3 per task and ACL, per seed; fine-tuning: the shared P1 row, (P3,F4) per task,
    # the matched baseline (one for both tasks: they pretrain for the same epochs), the extra rungs
    # and each successor's modes
    n_ft = 2 + n_tasks + len(rungs) + len(methods) * len(modes)
    return {"prepare_data": 1, "pretrain": (n_tasks + len(methods)) * n_seeds, "finetune": n_ft * n_seeds,
            "evaluate": n_ft * n_seeds, "table3": 1, "claims": 1, "table_robust_ssl": 1, "table_compute": 1,
            "all_tables": 1}


def passes(cfg) -> dict:
    """Passes per training image, pretraining included, of each pretrained method and of each
    rung of the ladder, from the config through advss.protocol.passes_per_image (the rule the
    claims read back from the runs' meta.json)."""
    k = cfg["threat"]["train_steps"]
    ft = cfg["finetune"]["epochs"] * P.passes_per_image({"objective": {"kind": "adversarial", "mix": "adv"},
                                                         "threat": {"train_steps": k}})
    p3 = {t: P.pretrain_epochs(cfg["pretrain"], t) * P.passes_per_image(
        {"objective": {"kind": "adversarial", "mix": cfg["pretrain"]["adv_mix"]}, "threat": {"train_steps": k}}) + ft
        for t in cfg["pretrain"]["tasks"]}
    rs = cfg["robust_ssl"]
    succ = {m: rs["epochs"] * P.passes_per_image(
        {**P.contrastive_spec(m, rs.get("contrastive")), "threat": {"train_steps": rs.get("train_steps", k)}}) + ft
        for m in rs["methods"]}
    rung = {ft_id: (P.ft_epochs(ft_id) or cfg["finetune"]["epochs"]) * (k + 1) for ft_id in P.ladder(cfg)}
    return {"methods": {**p3, **succ}, "rungs": rung}


def test_config_is_the_headline_comparison_with_the_papers_threat():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["data"]["name"] == "fashion-mnist" and cfg["data"]["n_train"] and cfg["data"]["n_test"]
    assert sorted(map(tuple, cfg["finetune"]["scenarios"])) == [("P1", "F4"), ("P3", "F4")]
    assert sorted(cfg["pretrain"]["tasks"]) == ["jigsaw", "rotation"]
    assert cfg["seeds"] == [0, 1, 2] and cfg["deterministic"] is True
    t = cfg["threat"]
    assert (t["norm"], t["eps"], t["step"], t["random_start"]) == ("linf", "8/255", "2/255", True)
    assert t["eval_steps"] > t["train_steps"]  # the test attack is not weaker than the training one
    # one feature section, the successors': Table 3, the claims, the successors' and the compute tables
    assert not {"robustness", "ablations", "ensemble", "transfer"} & set(cfg)
    # the compute-matched baseline, one budget; and a tail at the last learning rate long enough for
    # the best epoch to come before the last (every (P1,F4) of the 5-epoch record peaked at its last)
    ft = cfg["finetune"]
    assert P.matched_baselines(cfg) == {t: f"full-adv-ep{cfg['pretrain']['epochs'] + ft['epochs']}"
                                        for t in cfg["pretrain"]["tasks"]}
    assert ft["epochs"] >= 10 and ft["epochs"] - ft["optim"]["milestones"][-1] >= 3
    assert cfg["data"]["n_train"] * (1 - cfg["data"]["val_fraction"]) == 2304  # the record's per-epoch time holds


def test_acl_is_fine_tuned_as_the_2020_rows():
    """One successor, ACL (P3), AFF only, fine-tuned exactly as the 2020 tasks' (P3,F4) (this
    config's F4), pretrained with this config's PGD-3 and batch."""
    cfg = yaml.safe_load(CONFIG.read_text())
    rs = cfg["robust_ssl"]
    assert rs["methods"] == ["acl"] and rs["finetune"] == ["F4"] and P.CONTRASTIVE["acl"]["p"] == "P3"
    assert rs.get("train_steps", cfg["threat"]["train_steps"]) == cfg["threat"]["train_steps"]
    assert rs["batch_size"] == cfg["finetune"]["batch_size"]
    assert P.finetune_settings(cfg["finetune"], rs, "acl", "F4") == P.finetune_settings(cfg["finetune"])


def test_ladder_covers_every_method_just_above_its_budget():
    """The claims compare each method with the cheapest (P1,F4) rung at or above its passes per
    image (advss.claims.control_rung): here every method has one, at most 5 % above its budget,
    and the plain (P1,F4) and the matched baseline stay on the ladder."""
    cfg = yaml.safe_load(CONFIG.read_text())
    b = passes(cfg)
    assert {"full-adv", *P.matched_baselines(cfg).values()} <= set(P.ladder(cfg))
    assert b["methods"] == {"rotation": 85, "jigsaw": 85, "acl": 110}  # 5·(3+2) + 60; 5·(3+2)·2 + 60
    for m, need in b["methods"].items():
        above = [r for r in b["rungs"].values() if r >= need]
        assert above and min(above) <= 1.05 * need, (m, need, b["rungs"])
    assert max(b["rungs"].values()) < 2 * max(b["methods"].values())  # no rung far past what it controls


def test_dry_run_passes_validation_and_lists_the_records_jobs_without_the_dataset(tmp_path):
    """One dry run (each costs ~10 s): the config validates, lists the record's jobs, needs no
    dataset to plan them (CI has none) and writes nothing."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["data"]["root"] = str(tmp_path / "no-fashion-mnist-here")
    path = tmp_path / "fm-cpu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "run").mkdir()
    assert dry_run(path, tmp_path / "run") == expected_jobs(cfg)
    assert not (tmp_path / "run" / "results").exists()


def test_committed_record_matches_the_config():
    """The dated record in benchmarks/ is Table 3 of this config's scenarios, tasks and seeds."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for name in ("table3.csv", "table3.md", "claims.csv", "claims.md", "README.md"):
        assert (RECORD / name).stat().st_size > 0, name
    rows = list(csv.DictReader((RECORD / "table3.csv").open()))
    labels = [TASK_LABEL[t] for t in cfg["pretrain"]["tasks"]]
    matched = P.matched_label(P.matched_baselines(cfg)["rotation"])
    assert {(r["scenario"], r["task"]) for r in rows} == {(s, t) for s in ("(P1,F4)", matched, "(P3,F4)")
                                                          for t in labels}
    for r in rows:
        assert int(r["n_seeds"]) == len(cfg["seeds"])
    assert "fashion-mnist-cpu.yaml" in (RECORD / "README.md").read_text()


def test_committed_record_has_a_control_for_every_method():
    """The record's compute table and claims: the ladder's rungs and every pretrained method of
    the config (each task's (P3,F4), each successor's AFF), all seeds, each method compared with
    a rung at or above its passes per image, none reading 'no control at this compute'."""
    cfg = yaml.safe_load(CONFIG.read_text())
    for name in ("compute.csv", "compute.md", "robust_ssl.csv", "robust_ssl.md"):
        assert (RECORD / name).stat().st_size > 0, name
    b = passes(cfg)
    rows = {r["model"]: r for r in csv.DictReader((RECORD / "compute.csv").open())}
    rungs = {P.model_label("scratch", ft) if ft != "full-adv" else "(P1,F4)": n for ft, n in b["rungs"].items()}
    methods = {**{f"(P3,F4) {TASK_LABEL[t]}": b["methods"][t] for t in cfg["pretrain"]["tasks"]},
               **{f"{P.CONTRASTIVE_LABEL[m]} ({P.CONTRASTIVE[m]['p']},AFF)": b["methods"][m]
                  for m in cfg["robust_ssl"]["methods"]}}
    assert set(rows) == set(rungs) | set(methods)
    for label, n in {**rungs, **methods}.items():
        assert float(rows[label]["passes"]) == n and int(rows[label]["n_seeds"]) == len(cfg["seeds"]), label
    claims = [r for r in csv.DictReader((RECORD / "claims.csv").open()) if "at the same compute" in r["claim"]]
    assert len(claims) == len(methods)
    for label, n in methods.items():
        control = min(r for r in rungs.values() if r >= n)
        assert rows[label]["control"] == f"{next(k for k, v in rungs.items() if v == control)} ({control})"
        (c,) = [r for r in claims if r["task"].startswith(label + " vs ")]
        assert int(c["n_seeds"]) == len(cfg["seeds"]) and c["verdict"] != "no control at this compute"
    acl = [r for r in csv.DictReader((RECORD / "robust_ssl.csv").open()) if r["key"] == "acl"]
    assert len(acl) == 1 and int(float(acl[0]["n_seeds"])) == len(cfg["seeds"])
