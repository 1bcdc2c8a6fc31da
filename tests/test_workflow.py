"""The Snakemake workflow: lint, the paper DAG, config errors, the demo end to end,
and an interrupted sweep that reruns only what had not finished."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT

SNAKEFILE = ROOT / "workflow" / "Snakefile"


def snakemake(*args, cwd=ROOT, timeout=900, check=True):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(cwd), *map(str, args)]
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def job_counts(out: str) -> dict:
    table = out.split("Job stats:")[1].split("total")[0]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_lint_is_clean(tmp_path):
    p = snakemake("--lint", "--configfile", ROOT / "config/demo.yaml", cwd=tmp_path, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Congratulations" in p.stdout + p.stderr or "no lints" in (p.stdout + p.stderr).lower()


def test_paper_dag_lists_every_job_without_network(tmp_path):
    p = snakemake("-n", "table3", "--configfile", ROOT / "config/config.yaml", cwd=tmp_path)
    counts = job_counts(p.stdout)
    assert counts["prepare_data"] == 1
    assert counts["pretrain"] == 6       # 3 tasks × (P2, P3)
    assert counts["finetune"] == 21      # 2 shared P1 rows + 6 scenarios × 3 tasks + the matched baseline (one
    assert counts["evaluate"] == 21      # budget: every task pretrains 100 epochs; 200 with the fine-tuning's)
    assert counts["robustness"] == 21    # the AutoAttack column of every row
    assert "Fine-tuning scratch with full-adv-ep200 (seed 0)" in p.stdout
    assert counts["table3"] == 1
    p = snakemake("-n", "all_tables", "--configfile", ROOT / "config/config.yaml", cwd=tmp_path)
    counts = job_counts(p.stdout)
    for rule in ("table3", "table4", "table5", "table6", "table7", "table8", "table_rotaux", "table_autoattack",
                 "table_unforeseen", "table_cifar10c", "claims"):
        assert counts.get(rule) == 1, rule
    # one `pretrain` rule: 6 single-task + 3 ensemble (AP+SE, AP+DPE ±) + 5 ablation pretrainings
    assert counts["pretrain"] == 6 + 3 + 5 and len(re.findall(r"Pretraining ensemble-", p.stdout)) == 3
    assert counts["transfer"] == 3 and counts["ensemble_eval"] == 4
    assert counts["finetune"] > 20 and counts["evaluate"] == counts["finetune"]
    assert not (tmp_path / "results").exists()


def test_dataset_configs_fine_tune_as_the_paper_config():
    """cifar100.yaml and rimagenet.yaml say every other key is the paper's: the fine-tuning
    optimiser, its 200-step warm-up from 0.01 included, is config.yaml's."""
    import yaml

    paper = yaml.safe_load((ROOT / "config/config.yaml").read_text())["finetune"]["optim"]
    assert paper["warmup_steps"] == 200 and paper["warmup_lr"] == 0.01
    for name in ("cifar100", "rimagenet"):
        assert yaml.safe_load((ROOT / f"config/{name}.yaml").read_text())["finetune"]["optim"] == paper, name


BAD_CONFIGS = {
    "unknown task": (lambda c: c["pretrain"].__setitem__("tasks", ["rotation", "colorization"]), "colorization"),
    "unknown scenario": (lambda c: c["finetune"]["scenarios"].append(["P4", "F1"]), "P4"),
    "typo in a key": (lambda c: c["finetune"].__setitem__("epoch", 3), "epoch"),
    "wrong type": (lambda c: c["threat"].__setitem__("eps", "eight"), "eight"),
    "step above eps": (lambda c: c["threat"].__setitem__("step", "16/255"), "threat.step"),
    "missing optimiser of a task": (lambda c: c["pretrain"]["optim"].pop("selfie"), "selfie"),
    "class map not found": (lambda c: c["data"].update(name="imagefolder", root="data/imagenet",
                                                       imagefolder={"class_map": "no-such-map.tsv"}),
                            "data.imagefolder.class_map: class map not found: no-such-map.tsv"),
}


@pytest.mark.parametrize("kind", sorted(BAD_CONFIGS))
def test_bad_config_fails_before_any_job(tmp_path, kind):
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    mutate, needle = BAD_CONFIGS[kind]
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("all", "-c1", "--configfile", path, cwd=tmp_path, check=False)
    msg = p.stdout + p.stderr
    assert p.returncode != 0
    assert "invalid config" in msg and str(path) in msg and needle in msg, msg[-2000:]
    assert not (tmp_path / "results").exists()


def test_malformed_yaml_is_refused(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("run: demo\nseeds: [0\n")
    p = snakemake("all", "-c1", "--configfile", path, cwd=tmp_path, check=False)
    # Snakemake parses --configfile itself, before any advss code runs; its message
    # names the problem but not the file (a Snakemake limitation, noted in the README).
    assert p.returncode != 0 and "not valid JSON or YAML" in p.stdout + p.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_directory_fails_in_the_first_job(tmp_path):
    cfg = yaml.safe_load((ROOT / "config/demo.yaml").read_text())
    cfg["data"].update(name="fashion-mnist", root=str(tmp_path / "nowhere"))
    path = tmp_path / "fm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("all", "-c1", "--configfile", path, cwd=tmp_path, check=False)
    assert p.returncode != 0
    log = (tmp_path / "results/demo/logs/prepare_data.log").read_text()
    assert "not found" in log and "nowhere" in log
    assert not (tmp_path / "results/demo/data/dataset.pt").exists()
    assert not list((tmp_path / "results/demo").glob("pretrain/*/*/model.pt"))


@pytest.mark.slow
def test_demo_end_to_end_then_interrupted_rerun_runs_only_missing_jobs(tmp_path, mini_run):
    """The whole DAG on tiny data (the mini_run fixture), check the tables; then, on a
    copy, kill a rerun mid-sweep and check that the next run redoes only the unfinished jobs."""
    cfg = ROOT / "tests/configs/mini.yaml"
    shutil.copytree(mini_run, tmp_path, dirs_exist_ok=True, symlinks=True)
    shutil.rmtree(tmp_path / ".snakemake", ignore_errors=True)  # no lock or metadata of the other directory
    assert "Nothing to be done" in (p := snakemake("all", "-n", "--configfile", cfg, cwd=tmp_path)).stdout + p.stderr
    run = tmp_path / "results/mini"
    rows = (run / "tables/table3.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 24 + 3  # 8 scenarios × 3 tasks and the matched baseline of each task
    md = (run / "tables/table3.md").read_text()
    assert "(P3,F4)" in md and "Paper RA" in md and "51.05" in md
    assert "\\begin{tabular}" in (run / "tables/table3.tex").read_text()
    for ext in ("png", "pdf"):
        assert (run / f"figures/figure1.{ext}").stat().st_size > 1000
    assert not list(run.glob(".resume/**/last.pt"))

    # Interrupt a sweep: delete everything downstream of pretraining (Snakemake would not
    # redo missing intermediates of up-to-date tables), rerun, kill it after some jobs finished.
    total = len(list(run.glob("finetune/*/*/*/test.json")))
    assert total >= 20
    for d in run.iterdir():
        if d.is_dir() and d.name not in ("data", "pretrain", "logs", ".resume"):
            shutil.rmtree(d)
    before = {p: p.stat().st_mtime_ns for p in run.glob("pretrain/*/*/model.pt")}
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(tmp_path), "all", "-c2",
           "--configfile", str(cfg)]
    # SIGINT back to its default in the child: a suite started in the background (`nohup … &`)
    # hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 600
    while len(list(run.glob("finetune/*/*/*/test.json"))) < 4:
        assert proc.poll() is None, f"the sweep ended early (exit {proc.returncode})"
        assert time.time() < deadline, "the sweep made no progress in 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: Snakemake stops its jobs and releases its lock
    proc.wait(timeout=300)
    done = {p: p.stat().st_mtime_ns for p in run.glob("finetune/*/*/*/test.json")}
    assert proc.returncode != 0 and len(done) < total, (
        f"SIGINT had no effect: the sweep exited {proc.returncode} with {len(done)}/{total} evaluations done")
    assert 4 <= len(done)
    p = snakemake("all", "-n", "--configfile", cfg, cwd=tmp_path)
    planned = job_counts(p.stdout)
    # A job whose file landed just before the kill, but whose completion Snakemake had not
    # recorded yet, is redone (it cannot tell): at most the two that ran at once (-c2).
    replanned = {q for q in done if str(q.relative_to(tmp_path)) in p.stdout}
    assert len(replanned) <= 2
    assert planned["evaluate"] == total - len(done) + len(replanned)
    snakemake("all", "-c2", "--configfile", cfg, cwd=tmp_path)
    finished = {q: t for q, t in done.items() if q not in replanned}
    assert all(q.stat().st_mtime_ns == t for q, t in finished.items())  # finished jobs were not rerun
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())
    assert len(list(run.glob("finetune/*/*/*/test.json"))) == total


def test_slurm_profile_runs_the_paper_and_a_bare_run_the_demo(tmp_path):
    """`snakemake --profile slurm all_tables` regenerates the paper (config/config.yaml);
    `--configfile` still wins over the profile; without the profile the demo is the default."""
    (tmp_path / "config").symlink_to(ROOT / "config")
    profile = ROOT / "workflow" / "profiles" / "slurm"
    p = snakemake("-n", "all_tables", "--profile", profile, cwd=tmp_path)
    assert "results/cifar10-paper/" in p.stdout and "results/demo/" not in p.stdout
    p = snakemake("-n", "all_tables", "--profile", profile, "--configfile", ROOT / "config/demo.yaml", cwd=tmp_path)
    assert "results/demo/" in p.stdout and "results/cifar10-paper/" not in p.stdout
    p = snakemake("-n", "all_tables", "-c2", cwd=tmp_path)
    assert "results/demo/" in p.stdout and "results/cifar10-paper/" not in p.stdout
