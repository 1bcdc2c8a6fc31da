"""config/robust-ssl.yaml dry-runs with the successors' jobs and specs, and the workflow
deploys as a Snakemake module from a fresh folder (what `snakedeploy deploy-workflow` sets up)."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import yaml

from conftest import ROOT

SNAKEFILE = ROOT / "workflow" / "Snakefile"


def _dry(cmd, cwd):
    p = subprocess.run([sys.executable, "-m", "snakemake", *cmd, "-n", "-p"], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout.split("Job stats:")[1].split("total")[0]
    return p.stdout, {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def _specs(out, command):
    """The --spec of every `python -m advss <command>` line of a dry run."""
    key = f"python -m advss {command} "
    found = [shlex.split(line[line.index(key):]) for line in out.splitlines() if key in line]
    return [json.loads(a[a.index("--spec") + 1]) for a in found]


def test_robust_ssl_config_lists_the_successors_jobs(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "robust-ssl.yaml").read_text())
    out, jobs = _dry(["-s", str(SNAKEFILE), "-d", str(tmp_path), "--configfile", str(ROOT / "config" / "robust-ssl.yaml")],
                     tmp_path)
    methods, tasks, modes = cfg["robust_ssl"]["methods"], cfg["pretrain"]["tasks"], cfg["robust_ssl"]["finetune"]
    assert jobs["pretrain"] == len(methods) + len(tasks)  # each method, and each 2020 task's P3
    assert jobs["model_card"] == len(methods) * len(modes) and jobs["table_robust_ssl"] == 1
    assert jobs["robustness"] == len(methods) * len(modes) + len(tasks)  # AutoAttack on every row's model
    contrastive = [s for s in _specs(out, "pretrain") if s["task"] == "contrastive"]
    assert len(contrastive) == len(methods)
    for s in contrastive:
        assert s["model"]["arch"] == "resnet18" and s["batch_size"] == 512 and s["epochs"] == 1000
        assert s["threat"]["train_steps"] == 5 and s["pretext"]["contrastive"]["temperature"] == 0.5
        assert s["augment"] is False and s["optim"]["optimizer"] == "lars" and s["optim"]["lr"] == 5.0
    kinds = sorted((s["objective"]["kind"], s["pretext"]["contrastive"].get("dual_bn", False),
                    s["pretext"]["contrastive"].get("schedule", "constant")) for s in contrastive)
    assert kinds == [("acl", True, "constant"), ("acl", True, "dynacl"), ("standard", False, "constant")]
    fts = _specs(out, "finetune")
    aff = [s for s in fts if not s["partial"] and s["select_by"] == "val_ra"]
    assert aff and all(s["objective"]["kind"] == "trades" and s["epochs"] == 100 and s["batch_size"] == 128 for s in aff)
    slf = [s for s in fts if s["partial"]]  # SLF/ALF exist for the contrastive models only, with their own settings
    assert len(slf) == 2 * len(methods) and all(s["epochs"] == 25 and s["optim"]["lr"] == 0.01 for s in slf)


def test_workflow_runs_as_a_module_from_a_fresh_folder(tmp_path):
    """A deployment folder holding only a Snakefile with a `module` declaration that points at
    this checkout's workflow, and its config/: the demo dry-runs from there."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((ROOT / "config" / "demo.yaml").read_text())
    (tmp_path / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n\n'
        "module advss:\n"
        f"    snakefile:\n        {str(SNAKEFILE)!r}\n"
        "    config:\n        config\n\n\n"
        "use rule * from advss\n")
    out, jobs = _dry(["--configfile", "config/config.yaml", "-c1"], tmp_path)
    assert jobs["all"] == 1 and jobs["table3"] == 1 and jobs["table_robust_ssl"] == 1 and jobs["pretrain"] > 3
    assert "results/demo/tables/robust_ssl.csv" in out


def test_catalog_files_describe_every_config_and_key():
    """config/README.md names every config file and every top-level config key; the catalog
    file has the keys the snakemake-workflow-catalog reads."""
    readme = (ROOT / "config" / "README.md").read_text()
    for f in sorted((ROOT / "config").iterdir()):
        if f.suffix in (".yaml", ".tsv"):
            assert f"`{f.name}`" in readme, f.name
    schema = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())
    for key in schema["properties"]:
        assert f"| `{key}` |" in readme, key
    cat = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    assert {"mandatory-flags", "software-stack-deployment", "report"} <= set(cat)
    assert cat["mandatory-flags"]["flags"].startswith("--configfile config/")
    assert (ROOT / cat["mandatory-flags"]["flags"].split()[1]).exists()
    assert isinstance(cat["software-stack-deployment"]["conda"], bool)
