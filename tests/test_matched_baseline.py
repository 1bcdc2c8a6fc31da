"""The compute-matched baseline (issue 19, item 1): (P1,F4) trained for the pretraining's plus
the fine-tuning's epochs, one job per distinct budget; its Table 3 row, Figure 1 point and
claim; the budget ratios and not-converged notes of the claims table; Figure 1's red star and
Table 3's account of what F1/F2 trained."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from advss import claims as C
from advss import protocol as P
from advss import results
from advss.io import write_json
from advss.report import claims as report_claims
from advss.report import finetuning as R
from conftest import ROOT
from test_stats import fill, report_spec
from test_workflow import job_counts, snakemake

TASKS = ("rotation", "jigsaw", "selfie")
SEEDS = [0, 1, 2]
PT_EPOCHS = {"rotation": 5, "jigsaw": 5, "selfie": 10}  # Selfie pretrains longer: a budget of its own
FT_EPOCHS, K = 5, 3
MATCHED = {t: f"full-adv-ep{e + FT_EPOCHS}" for t, e in PT_EPOCHS.items()}


def test_matched_ids_milestones_and_pass_counts():
    cfg = {"pretrain": {"tasks": list(TASKS), "epochs": PT_EPOCHS},
           "finetune": {"scenarios": [["P1", "F4"], ["P3", "F4"]], "epochs": FT_EPOCHS}}
    assert P.matched_baselines(cfg) == {"rotation": "full-adv-ep10", "jigsaw": "full-adv-ep10",
                                        "selfie": "full-adv-ep15"}
    assert P.matched_baselines({**cfg, "finetune": {**cfg["finetune"], "matched_baseline": False}}) == {}
    assert P.matched_baselines({**cfg, "finetune": {**cfg["finetune"], "scenarios": [["P1", "F4"]]}}) == {}
    assert P.ft_epochs("full-adv-ep10") == 10 and P.ft_epochs("full-adv") is None and P.ft_epochs(P.BASELINE_FT) is None
    assert P.parse_ft("full-adv-ep10") == (False, True) and re.fullmatch(P.FT_RE, "full-adv-ep10")
    assert not re.fullmatch(P.FT_RE, "full-adv-ep0")
    # the paper's 60/80 of 100 at 200 epochs, and the Fashion-MNIST record's 7/10 of 12 at 17
    optim = {"lr": 0.1, "schedule": "step", "milestones": [60, 80], "warmup_steps": 200}
    assert P.scaled_optim(optim, 200, 100) == {**optim, "milestones": [120, 160]}
    assert P.scaled_optim({**optim, "milestones": [7, 10]}, 17, 12)["milestones"] == [10, 14]
    # the budget rule: PGD-K costs K passes; ST 1, Madry AT K + 1, P3's clean+adv mean K + 2
    threat = {"train_steps": K}
    assert P.passes_per_image({"objective": {"kind": "standard"}, "threat": threat}) == 1
    assert P.passes_per_image({"objective": {"kind": "adversarial", "mix": "adv"}, "threat": threat}) == K + 1
    assert P.passes_per_image({"objective": {"kind": "adversarial", "mix": "clean+adv"}, "threat": threat}) == K + 2


def test_one_matched_job_per_distinct_budget_with_its_scaled_spec(tmp_path):
    """Selfie pretrains 5 epochs, Rotation and Jigsaw 3: two matched jobs (6 and 8 epochs)."""
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    for feature in ("ablations", "robustness", "ensemble", "transfer"):
        cfg.pop(feature)
    cfg["pretrain"]["epochs"] = {"rotation": 3, "jigsaw": 3, "selfie": 5}
    cfg["finetune"].pop("ladder")  # the matched rungs only
    path = tmp_path / "budgets.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "all_tables", "--configfile", path, cwd=tmp_path)
    jobs = set(re.findall(r"Fine-tuning (\S+ with \S+) \(seed 0\)", p.stdout))
    assert {j for j in jobs if "-ep" in j} == {"scratch with full-adv-ep6", "scratch with full-adv-ep8"}
    assert job_counts(p.stdout)["evaluate"] == job_counts(p.stdout)["finetune"]
    specs = {m.group(2): json.loads(m.group(1)) for m in re.finditer(
        r"python -m advss (?:finetune|pretrain) --spec '([^']*)'.*?--out-model results/demo/(?:finetune|pretrain)/"
        r"([^ ]+)/seed0/model\.pt", p.stdout)}
    assert sorted(k for k in specs if "-ep" in k) == ["scratch/full-adv-ep6", "scratch/full-adv-ep8"]
    for n in (6, 8):
        s = specs[f"scratch/full-adv-ep{n}"]
        assert s["epochs"] == n and s["optim"]["milestones"] == [(2 * 2 * n + 3) // 6]  # [2] of 3 epochs, scaled
        assert s["objective"] == {"kind": "adversarial", "mix": "adv"} and s["partial"] is False
        assert {k: v for k, v in s.items() if k not in ("epochs", "optim")} == \
            {k: v for k, v in specs["scratch/full-adv"].items() if k not in ("epochs", "optim")}
    assert specs["selfie-adv"]["epochs"] == 5 and specs["rotation-adv"]["epochs"] == 3
    assert not (tmp_path / "results").exists()


# ------------------------------------------------------------- a synthetic results folder
def meta(d, spec, best, run, **extra):
    write_json(d / "meta.json", {"spec": spec, "epochs_to_best": best, "epochs_run": run, "spec_hash": "fixture",
                                 **extra})


def adv_spec(epochs, mix="adv"):
    return {"objective": {"kind": "adversarial", "mix": mix}, "threat": {"train_steps": K}, "epochs": epochs}


def results_folder(run_dir):
    """Table 3's scenarios (test_stats.fill), then the runs this feature reads, with their specs:
    P3 pretraining 5 (Selfie 10) epochs, (P1,F4) best at its last epoch in every seed, (P3,F4)
    Rotation converged (best at 3 of 5), Jigsaw not (5 of 5), the matched baselines between."""
    noise = (0.5, -0.4, 0.1)
    fill(run_dir, SEEDS, TASKS, lambda src, ft, s: (80.0, 40.0 + noise[s], 5) if src == "scratch"
         else (82.0, 45.0 - noise[s], 4))
    for s in SEEDS:
        for t in TASKS:
            meta(results.pretrain_dir(run_dir, f"{t}-adv", s), adv_spec(PT_EPOCHS[t], "clean+adv"), 0, PT_EPOCHS[t])
            meta(results.finetune_dir(run_dir, f"{t}-adv", "full-adv", s), adv_spec(FT_EPOCHS),
                 3 if t == "rotation" else FT_EPOCHS, FT_EPOCHS)
            frozen, kept = ((["trunk.stem.", "trunk.layer1.", "trunk.layer2.", "trunk.layer3."],
                             ["trunk.layer4.0.conv1.weight", "trunk.layer4.0.bn1.running_mean"])
                            if t == "selfie" else (["trunk."], []))
            for ft in ("partial-std", "partial-adv"):
                meta(results.finetune_dir(run_dir, f"{t}-adv", ft, s), adv_spec(FT_EPOCHS), 4, FT_EPOCHS,
                     transfer={"loaded": 10, "kept_at_init": kept, "frozen_prefixes": frozen})
        meta(results.finetune_dir(run_dir, "scratch", "full-adv", s), adv_spec(FT_EPOCHS), FT_EPOCHS, FT_EPOCHS)
        for ft in set(MATCHED.values()):
            n = P.ft_epochs(ft)
            d = results.finetune_dir(run_dir, "scratch", ft, s)
            write_json(d / "test.json", {"ta": 0.81, "ra": (42.0 + noise[s] - (n == 15)) / 100})
            meta(d, adv_spec(n), n - 2, n)
        write_json(run_dir / "ensembles" / "jigsaw+rotation+selfie" / f"seed{s}.json", {"ta": 0.83, "ra": 0.47})
    return {**report_spec(run_dir, SEEDS, TASKS), "matched": MATCHED, "ensemble_star": "jigsaw+rotation+selfie"}


def test_claims_rows_budget_ratios_and_not_converged_notes(tmp_path):
    spec = results_folder(tmp_path)
    report_claims.table_claims(spec, tmp_path / "claims")
    df = pd.read_csv(tmp_path / "claims.csv")
    row = {(c, t): r for c, t, r in zip(df["claim"], df["task"], df.itertuples())}
    # the matched claim sits right after the paper's, per task; passes per image:
    # (P3,F4) 5·(3+2) + 5·(3+1) = 45 (Selfie 10·5 + 20 = 70), (P1,F4) 5·4 = 20, matched 10·4 = 40 (15·4 = 60)
    claims = list(df["claim"])
    i = claims.index("(P3,F4) RA > (P1,F4) RA")
    assert claims[i + 1] == "(P3,F4) RA > (P1,F4, same total budget) RA"
    for t, paper, matched in (("Rotation", 45 / 20, 45 / 40), ("Selfie", 70 / 20, 70 / 60)):
        assert row["(P3,F4) RA > (P1,F4) RA", t].budget_ratio == round(paper, 2)  # the CSV as the table shows
        m = row["(P3,F4) RA > (P1,F4, same total budget) RA", t]
        assert m.budget_ratio == round(matched, 2) and m.verdict == C.HOLDS
    # both sides converged: no note (NaN in the CSV); Selfie's (P3,F4) had not
    assert pd.isna(row["(P3,F4) RA > (P1,F4, same total budget) RA", "Rotation"].note)
    assert "(P3,F4) Selfie: best epoch = last" in row["(P3,F4) RA > (P1,F4, same total budget) RA", "Selfie"].note
    # RA claims keep their verdict and say the baseline was still improving
    r = row["(P3,F4) RA > (P1,F4) RA", "Rotation"]
    assert r.verdict == C.HOLDS and "not converged" in r.note and "(P1,F4): best epoch = last in 3/3 seeds" in r.note
    # epochs: Rotation 3 < 5 holds (only B censored: a lower bound cannot overturn it); Jigsaw 5 vs 5 would
    # "not hold", but B's 5 is a lower bound: undecided
    e = "(P3,F4) needs fewer epochs to best RA than (P1,F4)"
    assert row[e, "Rotation"].verdict == C.HOLDS and "cannot overturn" in row[e, "Rotation"].note
    assert row[e, "Jigsaw"].verdict == "undecided (not converged)"
    assert "not converged" in row[e, "Jigsaw"].note and "the epoch claim cannot be decided" in row[e, "Jigsaw"].note
    assert "(P3,F4) Jigsaw: best epoch = last in 3/3 seeds" in row[e, "Jigsaw"].note
    md = (tmp_path / "claims.md").read_text()
    assert "| Budget A/B | Note |" in md and "| 2.25× |" in md and "| 1.12× |" in md
    assert "(P1,F4, same total budget) is (P1,F4) trained for the pretraining's plus the fine-tuning's epochs" in md


def test_table3_has_the_matched_rows_their_budgets_and_what_partial_trained(tmp_path):
    spec = results_folder(tmp_path)
    R.table3(spec, tmp_path / "t3")
    t3 = pd.read_csv(tmp_path / "t3.csv")
    scen = list(dict.fromkeys(t3["scenario"]))
    assert scen[:4] == ["(P1,F3)", "(P1,F4)", "(P1,F4), 10 epochs", "(P1,F4), 15 epochs"]
    m = t3[t3["scenario"] == "(P1,F4), 15 epochs"]
    assert list(m["task"]) == ["Selfie"] and m["ra"].iloc[0] == round(41.0 + 0.2 / 3, 2)
    caption = (tmp_path / "t3.md").read_text().split("\n", 1)[0]
    assert "(P1,F4) 20; (P1,F4), 10 epochs 40; (P1,F4), 15 epochs 60; (P3,F4) Rotation 45" in caption
    assert "(P3,F4) Selfie 70" in caption and "one job per distinct budget" in caption
    assert "P3's clean + adversarial mean K + 2" in caption
    assert ("(P3,F1) Rotation, (P3,F1) Jigsaw, (P3,F2) Rotation, (P3,F2) Jigsaw: the head only; "
            "(P3,F1) Selfie, (P3,F2) Selfie: layer4 (not transferred: from random init) and the head") in caption


def test_figure1_has_the_matched_points_and_the_red_star(tmp_path, monkeypatch):
    spec = results_folder(tmp_path)
    pts = R.figure1_points(spec).set_index("label")
    assert list(pts.index) == ["Baseline (P1,F4)", "Rotation (P3,F4)", "Jigsaw (P3,F4)", "Selfie (P3,F4)",
                               "Baseline (P1,F4), 10 epochs, same budget", "Baseline (P1,F4), 15 epochs, same budget",
                               "Ensemble fine-tune (Jigsaw+Rotation+Selfie)"]
    assert pts.loc["Baseline (P1,F4), 10 epochs, same budget", "epochs"] == 8
    star = pts.loc["Ensemble fine-tune (Jigsaw+Rotation+Selfie)"]
    # TA/RA of the ensemble; its epochs are the members' summed, as the paper's 144: 3 + 5 + 5
    assert (star["marker"], star["ta"], star["ra"], star["epochs"]) == ("*", 83.0, 47.0, 13)
    assert (pts.drop(star.name)["marker"] == "o").all()
    seen = {}
    monkeypatch.setattr(R, "save_figure", lambda fig, prefix: seen.update(fig=fig))
    R.figure1(spec, tmp_path / "f1")
    ax = seen["fig"].axes[0]
    assert [t.get_text().split(":")[0] for t in ax.get_legend().get_texts()] == list(pts.index)
    offsets = ax.collections[-1].get_offsets()  # the last scatter: the star at (RA, TA)
    assert tuple(offsets[0]) == (47.0, 83.0) and tuple(ax.collections[-1].get_facecolor()[0][:3]) == (1.0, 0.0, 0.0)


def test_table3_lists_the_matched_rows_in_the_tasks_order():
    """The spec reaches the builder as sorted JSON ({'jigsaw': …, 'rotation': …}); the rows
    follow the tasks' order, as every other scenario's rows do."""
    from advss.report.finetuning import table3_jobs

    spec = {"scenarios": [["P1", "F4"], ["P3", "F4"]], "tasks": ["rotation", "jigsaw"],
            "matched": {"jigsaw": "full-adv-ep20", "rotation": "full-adv-ep20"}}
    assert [(r[0], r[1]) for r in table3_jobs(spec)] == [
        ("(P1,F4)", "rotation"), ("(P1,F4)", "jigsaw"), ("(P1,F4), 20 epochs", "rotation"),
        ("(P1,F4), 20 epochs", "jigsaw"), ("(P3,F4)", "rotation"), ("(P3,F4)", "jigsaw")]


# ------------------------------------------------------------- the compute ladder (issue 25, item 3)
def test_ladder_ids_are_the_plain_matched_and_configured_epochs():
    cfg = {"pretrain": {"tasks": list(TASKS), "epochs": PT_EPOCHS},
           "finetune": {"scenarios": [["P1", "F4"], ["P3", "F4"]], "epochs": FT_EPOCHS, "ladder": [30, 10, 5]}}
    # the plain (P1,F4) (finetune.epochs) is the bottom rung, the matched budgets join, duplicates once
    assert P.ladder(cfg) == ["full-adv", "full-adv-ep10", "full-adv-ep15", "full-adv-ep30"]
    assert P.ladder({**cfg, "finetune": {**cfg["finetune"], "ladder": []}}) == []  # the matched baselines alone: off
    with pytest.raises(ValueError, match="positive"):
        P.ladder({**cfg, "finetune": {**cfg["finetune"], "ladder": [0]}})


def ladder_folder(run_dir):
    """results_folder plus a 12-epoch rung (48 passes): (P3,F4) Rotation costs 45 passes, more than
    the 10-epoch rung (40) that matching in epochs would pick; Selfie's 70 is above the top (60)."""
    spec = results_folder(run_dir)
    for s in SEEDS:
        d = results.finetune_dir(run_dir, "scratch", "full-adv-ep12", s)
        write_json(d / "test.json", {"ta": 0.8, "ra": 0.41})
        meta(d, adv_spec(12), 10, 12)
    return {**spec, "ladder": ["full-adv", "full-adv-ep10", "full-adv-ep12", "full-adv-ep15"]}


def test_the_ladders_budgets_are_in_passes_and_each_method_gets_the_rung_at_or_above(tmp_path):
    spec = ladder_folder(tmp_path)
    assert C.ladder_budgets(spec) == [(20, "full-adv"), (40, "full-adv-ep10"), (48, "full-adv-ep12"),
                                      (60, "full-adv-ep15")]
    assert C.control_rung(spec, 45) == (48, "full-adv-ep12") and C.control_rung(spec, 40) == (40, "full-adv-ep10")
    assert C.control_rung(spec, 61) is None
    rows = {r["task"]: r for r in C.compute_claims(spec)}
    assert set(rows) == {"(P3,F4) Rotation vs (P1,F4), 12 epochs", "(P3,F4) Jigsaw vs (P1,F4), 12 epochs",
                         "(P3,F4) Selfie", "Ensemble of (P3,F4) Jigsaw+Rotation+Selfie"}


def test_a_method_above_the_ladders_top_reads_no_control_at_this_compute(tmp_path):
    spec = ladder_folder(tmp_path)
    report_claims.table_claims(spec, tmp_path / "claims")
    df = pd.read_csv(tmp_path / "claims.csv")
    df = df[df["claim"] == "RA ≥ (P1,F4) RA at the same compute (passes per image)"].set_index("task")
    selfie = df.loc["(P3,F4) Selfie"]
    assert selfie["verdict"] == C.NO_CONTROL and "70 passes per image; the ladder tops at 60" in selfie["note"]
    assert pd.isna(selfie["diff_mean"]) and pd.isna(selfie["budget_ratio"])
    rot = df.loc["(P3,F4) Rotation vs (P1,F4), 12 epochs"]
    # (P3,F4) 45 − noise against the rung's 41 % in every seed, at 45/48 of its passes
    assert rot["verdict"] == C.HOLDS and rot["budget_ratio"] == pytest.approx(45 / 48, abs=0.01)
    assert rot["diff_mean"] == pytest.approx(45 - 0.2 / 3 - 41, abs=0.01)  # the CSV keeps 2 decimals
    assert df.loc["Ensemble of (P3,F4) Jigsaw+Rotation+Selfie", "verdict"] == C.NO_CONTROL


def test_a_model_kept_at_its_last_epoch_by_design_is_not_called_unconverged(tmp_path):
    """RobustSSL_Benchmark's rows keep the last epoch (select_by last): best = last by construction."""
    spec = results_folder(tmp_path)
    assert C.unconverged(spec, [("jigsaw-adv", "full-adv")]) == ["(P3,F4) Jigsaw: best epoch = last in 3/3 seeds"]
    for s in SEEDS:
        meta(results.finetune_dir(tmp_path, "jigsaw-adv", "full-adv", s), {**adv_spec(FT_EPOCHS), "select_by": "last"},
             FT_EPOCHS, FT_EPOCHS)
    assert C.unconverged(spec, [("jigsaw-adv", "full-adv")]) == []
