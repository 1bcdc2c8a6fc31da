"""The claims table: verdicts from paired 95% intervals, flipping from "holds" to
"does not hold" when fixture metrics are swapped, and "undecided (no results)" for
features whose result files are absent."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from advss import claims as C
from advss.io import save_npz, write_json
from test_stats import fill, report_spec

TASKS = ("rotation", "jigsaw", "selfie")
SEEDS = [0, 1, 2]


def test_paired_interval_matches_a_hand_computation():
    r = C.paired_verdict({0: 11.0, 1: 12.0, 2: 13.0}, {0: 10.0, 1: 10.0, 2: 10.0}, ">")
    # differences 1, 2, 3: mean 2, std 1, half-width t(2)·1/√3 = 4.303/√3 = 2.484
    assert r["n_seeds"] == 3 and r["diff_mean"] == pytest.approx(2.0) and r["diff_std"] == pytest.approx(1.0)
    assert r["ci95_lo"] == pytest.approx(2 - 4.303 / math.sqrt(3)) and r["ci95_hi"] == pytest.approx(2 + 4.303 / math.sqrt(3))
    assert r["verdict"] == C.UNDECIDED  # the interval straddles 0
    assert C.paired_verdict({0: 10, 1: 9, 2: 11}, {0: 0, 1: 0, 2: 0}, ">")["verdict"] == C.HOLDS
    assert C.paired_verdict({0: 0, 1: 0, 2: 0}, {0: 10, 1: 9, 2: 11}, ">")["verdict"] == C.FAILS
    assert C.paired_verdict({0: 0, 1: 0, 2: 0}, {0: 10, 1: 9, 2: 11}, "<")["verdict"] == C.HOLDS
    # equal sides: "≥" holds, ">" does not
    assert C.paired_verdict({0: 5, 1: 6}, {0: 5, 1: 6}, ">=")["verdict"] == C.HOLDS
    assert C.paired_verdict({0: 5, 1: 6}, {0: 5, 1: 6}, ">")["verdict"] == C.FAILS
    # only the seeds both sides have are paired
    assert C.paired_verdict({0: 5, 1: 6}, {1: 1}, ">")["verdict"] == "undecided (one seed)"
    assert C.paired_verdict({}, {1: 1}, ">")["verdict"] == "undecided (no results)"


def test_every_task_needs_each_task():
    assert C.every_task([C.HOLDS, C.HOLDS]) == C.HOLDS
    assert C.every_task([C.HOLDS, C.UNDECIDED]) == C.UNDECIDED
    assert C.every_task([C.HOLDS, C.UNDECIDED, C.FAILS]) == C.FAILS


def paper_like(src, ft, seed):
    """(TA, RA, epochs): adversarial pretraining helps, as in the paper, with seed noise."""
    noise = (0.5, -0.4, 0.1)[seed]
    if ft == "full-adv":
        return (80.0, 40.0 + noise, 9 + seed) if src == "scratch" else (82.0, 45.0 - noise, 4)
    if ft == "partial-adv":
        return 70.0, 30.0 + noise, 6
    return 90.0 + noise, 0.0, 5


def swapped(src, ft, seed):
    """The same numbers with the (P3,F4) and (P1,F4) rows, and F4 and F2, exchanged."""
    if ft == "full-adv":
        return paper_like("rotation-adv" if src == "scratch" else "scratch", ft, seed)
    if ft == "partial-adv":
        return paper_like(src, "full-adv", seed)
    return paper_like(src, ft, seed)


def verdicts(run_dir, seeds=SEEDS):
    spec = report_spec(run_dir, seeds, TASKS)
    C.table_claims(spec, run_dir / "claims")
    df = pd.read_csv(run_dir / "claims.csv")
    return {(c, t): v for c, t, v in zip(df["claim"], df["task"], df["verdict"])}


def test_claims_flip_when_metrics_are_swapped(tmp_path):
    fill(tmp_path / "a", SEEDS, TASKS, paper_like)
    fill(tmp_path / "b", SEEDS, TASKS, swapped)
    a, b = verdicts(tmp_path / "a"), verdicts(tmp_path / "b")
    table3 = [k for k in a if not k[0].startswith(("the ", "Table 4"))]
    assert len(table3) == 3 * 3 + 1  # three claims × three tasks + the "every task" summary
    assert all(a[k] == C.HOLDS for k in table3), a
    assert all(b[k] == C.FAILS for k in table3), b
    # no ensemble or transfer results in this run: those claims cannot be decided
    assert [v for k, v in a.items() if k not in table3] == ["undecided (no results)"] * 4
    md = (tmp_path / "a" / "claims.md").read_text()
    # by hand: differences 45 − 40 − 2·noise = 4.0, 5.8, 4.8: mean 4.87, std 0.90, half-width 4.303·0.90/√3 = 2.24
    assert "| (P3,F4) RA > (P1,F4) RA | Rotation | 4.87 ± 0.90 | [2.63, 7.11] | 3 | holds | 3.18 |" in md
    assert "config cafe0123" in md


def test_one_seed_decides_nothing(tmp_path):
    fill(tmp_path, [0], TASKS, paper_like)
    # (the "every task" summary row reads plain "undecided")
    assert set(verdicts(tmp_path, [0]).values()) == {"undecided (one seed)", "undecided (no results)", C.UNDECIDED}


def write_ensemble_and_transfer(run_dir, ens_gain, diag_gain):
    """Ensemble RA = best single (P3,F4) RA + ens_gain (results/{run}/ensembles/…/seed{k}.json,
    as advss.ensemble_eval writes it); transfer ASR on the source's own model = 50 %, on
    the others 50 − diag_gain %, per seed (with noise)."""
    for s in SEEDS:
        noise = (0.3, -0.2, 0.0)[s]
        best = 45.0 - (0.5, -0.4, 0.1)[s]
        write_json(run_dir / "ensembles" / "jigsaw+rotation+selfie" / f"seed{s}.json",
                   {"ta": 0.8, "ra": (best + ens_gain + noise) / 100})
        for src in TASKS:  # per-example success vectors over 1,000 test images, as advss.transfer saves them
            rates = [(50.0 - (0 if t == src else diag_gain) + noise) / 100 for t in TASKS]
            success = np.arange(1000)[None, :] < np.round(1000 * np.array(rates))[:, None]
            save_npz(run_dir / "transfer" / f"{src}-adv" / "full-adv" / f"seed{s}.npz",
                     targets=np.array([f"{t}-adv" for t in TASKS]), success=success)


@pytest.mark.parametrize("gain, verdict", [(3.0, C.HOLDS), (-3.0, C.FAILS)])
def test_ensemble_and_transfer_claims_read_their_result_files(tmp_path, gain, verdict):
    fill(tmp_path, SEEDS, TASKS, paper_like)
    write_ensemble_and_transfer(tmp_path, gain, gain)
    v = verdicts(tmp_path)
    others = [val for k, val in v.items() if k[0].startswith(("the ", "Table 4"))]
    assert others == [verdict] * 4


@pytest.mark.slow
def test_two_seed_workflow_makes_tables_claims_and_report(tmp_path):
    """The mini config over two seeds, two tasks and the three scenarios the claims use,
    with the transfer feature (Tables 4, 6) on and the other features off, to stay quick:
    mean ± std tables, a claims table that reads the real transfer and ensemble results,
    and a self-contained HTML report."""
    import yaml

    from conftest import ROOT
    from test_workflow import snakemake

    cfg = yaml.safe_load((ROOT / "tests/configs/mini.yaml").read_text())
    core = ("run", "seeds", "deterministic", "data", "model", "threat", "pretext", "pretrain", "finetune",
            "evaluate", "transfer")
    cfg = {k: v for k, v in cfg.items() if k in core}
    cfg.update(run="mini-seeds", seeds=[0, 1])
    cfg["pretrain"]["tasks"] = ["rotation", "jigsaw"]
    cfg["finetune"]["scenarios"] = [["P1", "F4"], ["P3", "F2"], ["P3", "F4"]]
    config = tmp_path / "seeds.yaml"
    config.write_text(yaml.safe_dump(cfg))
    # the three report rules as targets: what they need runs, and nothing of other features' figures
    snakemake("claims", "table3", "figure1", "-c1", "--configfile", config, "--report", "report.html",
              "--report-after-run", cwd=tmp_path, timeout=600)
    out = tmp_path / "results/mini-seeds/tables"
    t3 = pd.read_csv(out / "table3.csv")
    assert (t3["n_seeds"] == 2).all() and t3["ra_ci95"].notna().all()
    assert "| n |" in (out / "table3.md").read_text() and "±" in (out / "table3.md").read_text()
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 3 * 2 + 1 + 1 + 2  # Table 3 claims × tasks, every-task row, ensemble, Table 4 columns
    assert (claims["n_seeds"] == 2).all() and claims["ci95_lo"].notna().all()
    assert set(claims["verdict"]) <= {C.HOLDS, C.FAILS, C.UNDECIDED}
    report = (tmp_path / "report.html").read_text()
    for name in ("table3.html", "claims.html", "figure1.png", "Claims of the paper"):
        assert name in report, name
