"""Statistics over seeds: Table 3's mean ± std, n and 95% interval match a hand
computation on fixture metrics; one seed keeps the single-seed table; Figure 1 gets
error bars only with several seeds."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from advss import protocol as P
from advss import results, tables
from advss.report import finetuning as R
from advss.io import write_json

ALL_SCENARIOS = [list(s) for s in P.TABLE3_SCENARIOS]


def write_result(run_dir, src, ft, seed, ta, ra, epochs):
    """The two files a fine-tune leaves that the report reads (TA/RA as fractions, like evaluate)."""
    d = results.finetune_dir(run_dir, src, ft, seed)
    write_json(d / "test.json", {"ta": ta / 100, "ra": ra / 100})
    write_json(d / "meta.json", {"epochs_to_best": epochs, "epochs_run": 10, "spec_hash": "fixture"})


def report_spec(run_dir, seeds, tasks=("rotation",), scenarios=ALL_SCENARIOS):
    return {"run": "fixture", "run_dir": str(run_dir), "tasks": list(tasks), "scenarios": scenarios,
            "seeds": list(seeds), "eval_steps": 20, "config_hash": "cafe0123"}


def fill(run_dir, seeds, tasks=("rotation",), value=lambda src, ft, seed: (80.0 + seed, 40.0 + seed, 5)):
    for src, ft in P.scenario_jobs(ALL_SCENARIOS, tasks):
        for s in seeds:
            write_result(run_dir, src, ft, s, *value(src, ft, s))


def test_t_quantiles_match_the_t_distribution():
    assert tables.t95(1) == pytest.approx(12.706) and tables.t95(2) == pytest.approx(4.303)
    # beyond the table: reference values of the two-sided 95% t quantile
    for dof, q in [(40, 2.0211), (60, 2.0003), (120, 1.9799), (10_000, 1.9602)]:
        assert tables.t95(dof) == pytest.approx(q, abs=1e-3)
    assert math.isnan(tables.t95(0))


def test_table3_statistics_match_a_hand_computation(tmp_path):
    # (P3,F4) rotation over three seeds: RA 40, 42, 47 %, TA 80, 81, 85 %, epochs 3, 4, 8
    ra, ta, ep = [40.0, 42.0, 47.0], [80.0, 81.0, 85.0], [3, 4, 8]
    fill(tmp_path, [0, 1, 2])
    for s in range(3):
        write_result(tmp_path, "rotation-adv", "full-adv", s, ta[s], ra[s], ep[s])
    R.table3(report_spec(tmp_path, [0, 1, 2]), tmp_path / "t3")
    row = pd.read_csv(tmp_path / "t3.csv").query("scenario == '(P3,F4)'").iloc[0]
    # by hand: RA mean 43, deviations -3, -1, 4 -> variance 26/2 = 13, std √13 (the CSV to two decimals)
    assert row["n_seeds"] == 3
    assert row["ra"] == 43.0
    assert row["ra_std"] == round(math.sqrt(13), 2)
    assert row["ra_ci95"] == round(4.303 * math.sqrt(13) / math.sqrt(3), 2)
    assert row["ta"] == 82.0 and row["ta_std"] == round(math.sqrt(7), 2)
    assert row["epochs"] == 5.0 and row["epochs_std"] == round(math.sqrt(7), 2)
    md = (tmp_path / "t3.md").read_text()
    assert "| (P3,F4) | Rotation | 3 | 82.00 ± 2.65 | 43.00 ± 3.61 | 5.0 ± 2.6 | 85.66 | 50.40 | 46 |" in md
    assert "mean ± std over 3 seeds" in md and "config cafe0123" in md
    assert r"$\pm$" in (tmp_path / "t3.tex").read_text()
    assert "43.00 ± 3.61" in (tmp_path / "t3.html").read_text()


def test_one_seed_keeps_the_single_seed_table(tmp_path):
    fill(tmp_path, [0])
    R.table3(report_spec(tmp_path, [0]), tmp_path / "t3")
    md = (tmp_path / "t3.md").read_text()
    assert "| Scenario | Task | TA | RA | Epochs | Paper TA | Paper RA | Paper Epochs |" in md
    assert "| (P3,F4) | Rotation | 80.00 | 40.00 | 5 | 85.66 | 50.40 | 46 |" in md
    assert "±" not in md.split("\n", 1)[1] and "one seed" in md
    csv = pd.read_csv(tmp_path / "t3.csv")
    assert (csv["n_seeds"] == 1).all() and csv["ra_std"].isna().all() and csv["ra_ci95"].isna().all()


@pytest.mark.parametrize("seeds, bars", [([0], 0), ([0, 1], 4)])
def test_figure1_has_error_bars_only_with_several_seeds(tmp_path, monkeypatch, seeds, bars):
    from matplotlib.container import ErrorbarContainer

    tasks = ("rotation", "jigsaw", "selfie")
    fill(tmp_path, seeds, tasks)
    seen = {}
    real_save = R.save_figure
    monkeypatch.setattr(R, "save_figure", lambda fig, prefix: (seen.update(fig=fig), real_save(fig, prefix)))
    R.figure1(report_spec(tmp_path, seeds, tasks), tmp_path / "f1")
    ax = seen["fig"].axes[0]
    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == bars  # baseline + 3 tasks
    if bars:  # the bar of the baseline spans its two seeds' RA: 40 and 41, std 1/√2
        xerr = [c for c in ax.containers if isinstance(c, ErrorbarContainer)][0].lines[2][0].get_segments()[0]
        assert xerr[1][0] - xerr[0][0] == pytest.approx(2 / math.sqrt(2))
    assert (tmp_path / "f1.png").stat().st_size > 0 and (tmp_path / "f1.pdf").stat().st_size > 0


def test_figures_are_byte_reproducible(tmp_path):
    """The same figure saved twice (a second apart) gives the same PNG and PDF bytes."""
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outs = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [3, 1, 2])
        tables.save_figure(fig, tmp_path / f"f{i}")
        plt.close(fig)
        outs.append([(tmp_path / f"f{i}.{ext}").read_bytes() for ext in ("png", "pdf")])
        time.sleep(1.1)  # the PDF date has one-second resolution
    assert outs[0] == outs[1]
