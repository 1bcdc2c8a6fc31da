"""Robustness against training compute (issue 25, item 4): the table and figure put every
method and the (P1,F4) ladder at their passes per training image, pretraining included, with
the same controls as the claims table."""
from __future__ import annotations

import pandas as pd
import pytest

from advss import claims as C
from advss import results
from advss.io import write_json
from advss.report import compute as R
from test_matched_baseline import SEEDS, ladder_folder


def with_autoattack(run_dir):
    """ladder_folder plus AutoAttack RA 30 + seed on every single model."""
    spec = ladder_folder(run_dir)
    for m in R.compute_models(spec):
        if not m["ensemble"]:
            for s in SEEDS:
                write_json(results.eval_path(run_dir, *m["models"][0], s, "autoattack"), {"ra": (30 + s) / 100})
    return spec


def test_every_model_sits_at_its_passes_with_its_control(tmp_path):
    spec = with_autoattack(tmp_path)
    R.table_compute(spec, tmp_path / "compute")
    df = pd.read_csv(tmp_path / "compute.csv").set_index("model")
    # the ladder in passes (K + 1 = 4 per epoch), the methods with their pretraining (K + 2 = 5 per epoch)
    assert df.loc[["(P1,F4)", "(P1,F4), 10 epochs", "(P1,F4), 12 epochs", "(P1,F4), 15 epochs"], "passes"].tolist() \
        == [20, 40, 48, 60]
    assert df.loc["(P3,F4) Rotation", "passes"] == 45 and df.loc["(P3,F4) Selfie", "passes"] == 70
    assert df.loc["Ensemble of (P3,F4) Jigsaw+Rotation+Selfie", "passes"] == 45 + 45 + 70
    assert df.loc["(P3,F4) Rotation", "control"] == "(P1,F4), 12 epochs (48)"
    assert df.loc["(P3,F4) Selfie", "control"] == C.NO_CONTROL
    # per seed means and their t-intervals: AutoAttack 30, 31, 32 -> mean 31, half-width t95(2)·1/√3
    assert df.loc["(P3,F4) Rotation", "ra_aa"] == pytest.approx(31)
    assert df.loc["(P3,F4) Rotation", "ra_aa_ci95"] == pytest.approx(4.303 / 3 ** 0.5, abs=0.01)  # the CSV keeps 2 decimals
    assert df.loc["(P3,F4) Rotation", "ra"] == pytest.approx(45 - 0.2 / 3, abs=0.01) and df.loc["(P3,F4) Rotation", "n_seeds"] == 3
    assert pd.isna(df.loc["Ensemble of (P3,F4) Jigsaw+Rotation+Selfie", "ra_aa"])  # not run on the ensemble here
    assert "Passes per image" in (tmp_path / "compute.md").read_text()


def test_the_figure_plots_each_seed_and_the_ladder_as_a_line(tmp_path, monkeypatch):
    spec = with_autoattack(tmp_path)
    seen = {}
    monkeypatch.setattr(R, "save_figure", lambda fig, prefix: seen.update(fig=fig))
    R.figure_compute(spec, tmp_path / "f")
    ax = seen["fig"].axes[0]
    assert ax.get_xscale() == "log" and "AutoAttack" in ax.get_ylabel()
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [20, 40, 48, 60] and list(line.get_ydata()) == [31, 31, 31, 31]
    # one small point per seed for each of the 4 rungs and 4 methods
    scatters = [c for c in ax.collections if len(c.get_offsets()) == len(SEEDS)]
    assert len(scatters) >= 8


def test_without_autoattack_the_figure_has_no_empty_panel_and_labelled_ticks(tmp_path, monkeypatch):
    spec = ladder_folder(tmp_path)  # no AutoAttack result anywhere
    seen = {}
    monkeypatch.setattr(R, "save_figure", lambda fig, prefix: seen.update(fig=fig))
    R.figure_compute(spec, tmp_path / "f")
    fig = seen["fig"]
    fig.canvas.draw()
    assert [ax.get_ylabel() for ax in fig.axes] == ["PGD RA (%)", "TA (%)"]
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert len(labels) >= 3  # passes 20-60: more than the one decade tick
