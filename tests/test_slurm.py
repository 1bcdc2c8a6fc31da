"""The project's SLURM profile, run through a real single-node SLURM cluster.

`tests/slurm/cluster.sh up` brings up slurmctld + slurmd on localhost (installing
Debian's slurm-wlm and munge first if they are missing and we are root). The
cluster has no accounting database, so every run adds
`--slurm-status-command squeue` to the profile (the profile's comment explains
why a site without accounting needs the same), and it has two fake GPUs, so
rules declaring `gpu=1` run with the profile exactly as a site gets it.

The tests assert that the jobs really were SLURM jobs: each job records its own
`$SLURM_JOB_ID`, and that id must be in slurmctld's job list (`scontrol show
job` keeps finished jobs for MinJobAge=600 s) as COMPLETED, with a GPU
allocated where the rule asked for one, and in the plugin's per-job log path.

Where SLURM cannot be installed or started the tests skip with the reason
(`pytest -rs` shows it); with ADVSS_REQUIRE_SLURM=1 (CI) they fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
PARTITION = "debug"  # the test cluster's only partition (cluster.sh)

# Options added to `--profile slurm` for the test cluster only:
TEST_CLUSTER_OPTIONS = [
    # No accounting database here, so sacct cannot answer (the profile's
    # comment on slurm-status-command); MinJobAge=600 makes squeue reliable.
    "--slurm-status-command", "squeue",
    # The plugin waits 40 s before its first status poll; 5 s keeps the test short.
    "--slurm-init-seconds-before-status-checks", "5",
    # Keep the plugin's per-job logs of successful jobs, to check them.
    "--slurm-keep-successful-logs",
]


def _run(cmd, timeout, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def _unavailable(reason: str):
    """Skip with the reason, or fail where CI demands SLURM (ADVSS_REQUIRE_SLURM=1)."""
    if os.environ.get("ADVSS_REQUIRE_SLURM") == "1":
        pytest.fail(f"ADVSS_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running test cluster; stopped afterwards if this fixture started it."""
    if shutil.which("bash") is None:
        _unavailable("SLURM test: no bash to run tests/slurm/cluster.sh")
    was_up = _run(["bash", str(CLUSTER), "status"], timeout=60).returncode == 0
    if not was_up:
        if os.geteuid() != 0:
            _unavailable("SLURM test: starting the local test cluster needs root")
        try:
            up = _run(["bash", str(CLUSTER), "up"], timeout=900)  # may apt-get install first
        except subprocess.TimeoutExpired:
            _unavailable("SLURM test: 'tests/slurm/cluster.sh up' did not finish in 900 s")
        if up.returncode != 0:
            tail = " | ".join(up.stderr.strip().splitlines()[-6:])
            _unavailable(f"SLURM test: 'tests/slurm/cluster.sh up' failed (exit {up.returncode}): {tail}")
    yield
    if not was_up:
        _run(["bash", str(CLUSTER), "down"], timeout=120)


def _snakemake_via_profile(args, timeout=300):
    """`snakemake --profile slurm ...` from the repository root, as a user types it."""
    env = dict(os.environ)
    # The profile reads partition/account from sbatch's own variables.
    env["SBATCH_PARTITION"] = PARTITION
    env.pop("SBATCH_ACCOUNT", None)
    cmd = [sys.executable, "-m", "snakemake", "--profile", "slurm", *args, *TEST_CLUSTER_OPTIONS]
    proc = _run(cmd, timeout=timeout, cwd=REPO, env=env)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-8000:]}"
    )
    return proc


def _slurm_jobs() -> dict[str, dict[str, str]]:
    """slurmctld's jobs by id, finished ones included (kept for MinJobAge).

    From `scontrol show job -o`: JobState, Partition, TresPerJob (the GRES
    asked for; without slurmdbd GPUs are not in the job's TRES), Comment (the
    plugin writes the rule name there), ...
    """
    out = _run(["scontrol", "show", "job", "-o"], timeout=30)
    assert out.returncode == 0, out.stderr
    jobs = {}
    for line in out.stdout.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields:
            jobs[fields["JobId"]] = fields
    return jobs


TOY_SNAKEFILE = r'''
localrules: all

rule all:
    input: "out/gather.json"

# Each job writes what SLURM told it; scatter_0 asks for one (fake) GPU.
rule scatter:
    output: "out/scatter_{i}.json"
    resources: gpu=lambda wc: int(wc.i == "0"), runtime=5
    shell:
        """
        python -c 'import json, os; json.dump({{k: os.environ.get(k) for k in \
            ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES")}}, open("{output}", "w"))'
        """

rule gather:
    input: expand("out/scatter_{i}.json", i=range(2))
    output: "out/gather.json"
    resources: runtime=5
    shell:
        """
        python -c 'import json, os, sys; json.dump({{"SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID"), \
            "inputs": [json.load(open(p)) for p in sys.argv[1:]]}}, open("{output}", "w"))' {input}
        """
'''


def test_toy_workflow_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    """Three jobs (one asking for a GPU) go through sbatch via the project's profile."""
    (tmp_path / "Snakefile").write_text(TOY_SNAKEFILE)
    _snakemake_via_profile(["--snakefile", str(tmp_path / "Snakefile"), "--directory", str(tmp_path)])

    gather = json.loads((tmp_path / "out" / "gather.json").read_text())
    records = [gather, *gather["inputs"]]
    ids = [r["SLURM_JOB_ID"] for r in records]
    assert all(ids), f"a job ran outside SLURM: {records}"
    assert len(set(ids)) == 3, f"expected 3 distinct SLURM jobs, got {ids}"

    jobs = _slurm_jobs()
    for r in gather["inputs"]:
        assert r["SLURM_JOB_PARTITION"] == PARTITION, r
    for jobid in ids:
        assert jobid in jobs, f"job {jobid} not known to slurmctld: {sorted(jobs)}"
        assert jobs[jobid]["JobState"] == "COMPLETED", jobs[jobid]
        assert jobs[jobid]["Partition"] == PARTITION, jobs[jobid]
    assert jobs[ids[0]]["Comment"] == "rule_gather", jobs[ids[0]]

    # `gpu=1` became `--gpus=1` and SLURM gave the job a (fake) GPU; gpu=0 did not.
    gpu_rec, cpu_rec = gather["inputs"]
    assert jobs[gpu_rec["SLURM_JOB_ID"]].get("TresPerJob") == "gres:gpu:1", jobs[gpu_rec["SLURM_JOB_ID"]]
    assert gpu_rec["CUDA_VISIBLE_DEVICES"] not in (None, ""), gpu_rec
    assert "gpu" not in jobs[cpu_rec["SLURM_JOB_ID"]].get("TresPerJob", ""), jobs[cpu_rec["SLURM_JOB_ID"]]
    assert cpu_rec["CUDA_VISIBLE_DEVICES"] is None, cpu_rec

    # The plugin's own logs name the same job ids (.snakemake/slurm_logs/rule_<r>/<wc>/<id>.log).
    logs = list((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= set(ids), logs


# A cheap slice of the real demo DAG: prepare_data (a local rule) -> finetune
# (P1 from scratch, F3) -> evaluate; both SLURM jobs declare gpu=1.
DEMO_TARGET = "results/demo/finetune/scratch/full-std/seed0/test.json"


def test_demo_subset_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    """The real workflow, a reduced DAG, through `--profile slurm`; outputs go to tmp_path."""
    for needed in ("workflow/Snakefile", "config/demo.yaml"):
        if not (REPO / needed).exists():
            pytest.skip(f"SLURM demo test: {needed} does not exist yet")
    # Targets before --configfile (it takes several values); --directory keeps
    # results/ and .snakemake/ out of the repository.
    _snakemake_via_profile(
        [DEMO_TARGET, "--directory", str(tmp_path), "--configfile", "config/demo.yaml"],
        timeout=420,
    )
    assert (tmp_path / DEMO_TARGET).is_file()

    # Plugin logs: .snakemake/slurm_logs/rule_<rule>/<wildcards>/<slurm job id>.log
    slurm_logs = tmp_path / ".snakemake" / "slurm_logs"
    by_rule = {}
    for log in slurm_logs.rglob("*.log"):
        rule = log.relative_to(slurm_logs).parts[0].removeprefix("rule_")
        by_rule.setdefault(rule, []).append(log.stem)
    assert sorted(by_rule) == ["evaluate", "finetune"], f"SLURM jobs per rule: {by_rule}"
    assert "prepare_data" not in by_rule  # a local rule stays on the submitting host

    jobs = _slurm_jobs()
    for rule, ids in by_rule.items():
        assert len(ids) == 1, (rule, ids)
        job = jobs.get(ids[0])
        assert job is not None, f"{rule}: SLURM job {ids[0]} unknown to slurmctld: {sorted(jobs)}"
        assert job["JobState"] == "COMPLETED", job
        assert job["Partition"] == PARTITION, job
        assert job["Comment"].startswith(f"rule_{rule}"), job
        assert job.get("TresPerJob") == "gres:gpu:1", job  # the rule's gpu=1 reached sbatch
