"""The design as data: scenario expansion, id grammar, and a torch-free import."""
import subprocess
import sys

import pytest

from advss import protocol as P


def test_import_protocol_does_not_import_torch():
    code = "import sys, advss.protocol; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_table3_expands_to_20_finetunes_and_6_pretrainings():
    jobs = P.scenario_jobs(P.TABLE3_SCENARIOS, P.TASKS)
    assert len(jobs) == 20 and len(set(jobs)) == 20
    assert ("scratch", "full-adv") in jobs and ("selfie-adv", "partial-std") in jobs
    assert sorted(P.pretrain_jobs(P.TABLE3_SCENARIOS, P.TASKS)) == sorted(
        f"{t}-{m}" for t in P.TASKS for m in ("std", "adv"))


def test_ids_round_trip_and_bad_ids_are_refused():
    assert P.parse_ft("partial-adv") == (True, True)
    assert P.parse_ft(P.finetune_id("F3")) == (False, False)
    assert P.parse_pt(P.pretrain_id("jigsaw", "P3")) == ("jigsaw", "adv")
    for bad in (lambda: P.parse_ft("half-adv"), lambda: P.pretrain_id("colorization", "P2"),
                lambda: P.finetune_id("F5"), lambda: P.pretrain_id("rotation", "P4")):
        with pytest.raises(ValueError):
            bad()


def test_paper_numbers_cover_every_table3_cell():
    for t in P.TASKS:
        for p, f in P.TABLE3_SCENARIOS:
            ta, ra, ep = P.PAPER_TABLE3[t][p + f]
            assert 0 <= ra <= ta <= 100 and 1 <= ep <= 100


def test_cli_refuses_bad_spec_with_a_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "advss", "evaluate", "--spec", "{not json", "--data", "x",
                          "--model", "m", "--out-json", "j", "--out-npz", "n"], capture_output=True, text=True)
    assert out.returncode == 2 and "not valid JSON" in out.stderr
    out = subprocess.run([sys.executable, "-m", "advss", "evaluate", "--spec", "{}", "--data", str(tmp_path / "d.pt"),
                          "--model", "m", "--out-json", "j", "--out-npz", "n", "--device", "cpu"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "d.pt" in out.stderr
