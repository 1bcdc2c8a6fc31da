"""config/robust-ssl.yaml dry-runs with the successors' jobs and specs, and the workflow
deploys as a Snakemake module from a fresh folder (what `snakedeploy deploy-workflow` sets up)."""
from __future__ import annotations

import json
import re
import shlex
import functools
import subprocess
import sys
import tempfile

import pytest
import yaml

from advss import protocol as P

from conftest import ROOT

SNAKEFILE = ROOT / "workflow" / "Snakefile"


def _dry(cmd, cwd):
    p = subprocess.run([sys.executable, "-m", "snakemake", *cmd, "-n", "-p"], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    table = p.stdout.split("Job stats:")[1].split("total")[0]
    return p.stdout, {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


@functools.lru_cache(maxsize=None)
def robust_ssl_dry():
    """The dry run of config/robust-ssl.yaml (stdout, job counts), made once per test session:
    several test files read it, and each snakemake start costs ~10 s on 2 cores."""
    work = tempfile.mkdtemp(prefix="advss-robust-ssl-dry-")
    return _dry(["-s", str(SNAKEFILE), "-d", work, "--configfile", str(ROOT / "config" / "robust-ssl.yaml")], work)


def _specs(out, command):
    """The --spec of every `python -m advss <command>` line of a dry run."""
    key = f"python -m advss {command} "
    found = [shlex.split(line[line.index(key):]) for line in out.splitlines() if key in line]
    return [json.loads(a[a.index("--spec") + 1]) for a in found]


def _finetune_specs(out):
    """{(src, ft): spec} of every fine-tuning in a dry run (src and ft read from --out-model)."""
    key = "python -m advss finetune "
    found = [shlex.split(line[line.index(key):]) for line in out.splitlines() if key in line]
    return {tuple(a[a.index("--out-model") + 1].split("/")[3:5]): json.loads(a[a.index("--spec") + 1]) for a in found}


def test_robust_ssl_config_lists_the_successors_jobs(tmp_path):
    cfg = yaml.safe_load((ROOT / "config" / "robust-ssl.yaml").read_text())
    out, jobs = robust_ssl_dry()
    methods, tasks, modes = cfg["robust_ssl"]["methods"], cfg["pretrain"]["tasks"], cfg["robust_ssl"]["finetune"]
    pretrained = [m for m in methods if m in P.CONTRASTIVE]  # DynACL++ post-processes DynACL's (test_dynaclpp)
    assert jobs["pretrain"] == len(pretrained) + len(tasks)  # each contrastive method, and each 2020 task's P3
    assert jobs["model_card"] == len(methods) * len(modes) and jobs["table_robust_ssl"] == 1
    # AutoAttack on every row's model and on each rung of the (P1,F4) compute ladder
    assert jobs["robustness"] == len(methods) * len(modes) + len(tasks) + len(P.ladder(cfg))
    contrastive = [s for s in _specs(out, "pretrain") if s["task"] == "contrastive"]
    assert len(contrastive) == len(pretrained)
    for s in contrastive:
        assert s["model"]["arch"] == "resnet18" and s["batch_size"] == 512 and s["epochs"] == 1000
        assert s["threat"]["train_steps"] == 5 and s["pretext"]["contrastive"]["temperature"] == 0.5
        assert s["augment"] is False and s["optim"]["optimizer"] == "lars" and s["optim"]["lr"] == 5.0
    kinds = sorted((s["objective"]["kind"], s["pretext"]["contrastive"].get("dual_bn", False),
                    s["pretext"]["contrastive"].get("schedule", "constant")) for s in contrastive)
    assert kinds == [("acl", True, "constant"), ("acl", True, "dynacl"), ("standard", False, "constant")]
    # the 2020 tasks' P3 crafts in train mode (the paper's code); ACL's and DynACL's pretraining in eval mode
    tasks_p3 = [s for s in _specs(out, "pretrain") if s["task"] != "contrastive"]
    assert len(tasks_p3) == len(tasks) and all(s["threat"]["bn_mode_when_crafting"] == "train" for s in tasks_p3)
    assert all(s["threat"]["bn_mode_when_crafting"] == "eval" for s in contrastive if s["objective"]["kind"] == "acl")
    assert all(s["weight_init"] == "kaiming_fan_out" for s in contrastive)  # ACL's and DynACL's ResNet init
    fts = _finetune_specs(out)
    # the 2020 tasks' (P3,F4): single-BN TRADES AFF on the 45k/5k split, best validation RA
    for t in tasks:
        s = fts[(f"{t}-adv", "full-adv")]
        assert s["objective"]["kind"] == "trades" and s["epochs"] == 100 and s["batch_size"] == 128
        assert s["select_by"] == "val_ra" and "train_data" not in s and not s.get("dual_bn")
        assert s["revision"]["trades"] == P.REVISION["trades"]  # the eval-mode clean target reruns TRADES jobs
    # the RSB rows: all 50k training images, the last epoch, the head zeroed, in every mode
    for m in methods:
        for f in modes:
            s = fts[(m, {"F1": "partial-std", "F2": "partial-adv", "F4": "full-adv"}[f])]
            assert s["train_data"] == "all" and s["select_by"] == "last" and s["head_init"] == "zero", (m, f)
        slf, alf = fts[(m, "partial-std")], fts[(m, "partial-adv")]
        for s in (slf, alf):  # RSB's SLF/ALF: lr 0.01, batch 512, 25 epochs, milestones 10,20
            assert s["partial"] and s["epochs"] == 25 and s["batch_size"] == 512 and s["optim"]["lr"] == 0.01
            assert s["optim"]["milestones"] == [10, 20]
        assert slf["objective"] == {"kind": "standard"}
        # ALF is PGD-10 cross-entropy AT crafted in eval mode, not TRADES
        assert alf["objective"] == {"kind": "adversarial", "mix": "adv"} and alf["threat"]["train_steps"] == 10
        assert alf["threat"]["bn_mode_when_crafting"] == "eval"
    aff = {m: fts[(m, "full-adv")] for m in methods}
    for m, s in aff.items():
        assert s["objective"]["kind"] == "trades" and s["objective"]["trades_beta"] == 6.0 and s["batch_size"] == 128
        assert s["optim"]["lr"] == 0.1 and s["threat"]["bn_mode_when_crafting"] == "eval"
    # AFF is dual-BN for ACL and DynACL (RSB's trades_loss_dual, from x itself); SimCLR has one BN
    assert aff["acl"]["dual_bn"] and aff["dynacl"]["dual_bn"] and not aff["simclr"].get("dual_bn")
    assert aff["acl"]["objective"]["start_std"] == aff["dynacl"]["objective"]["start_std"] == 0.0
    # DynACL's AFF: 25 epochs, milestones [15, 20]; ACL's: 100, [40, 60]
    assert (aff["dynacl"]["epochs"], aff["dynacl"]["optim"]["milestones"]) == (25, [15, 20])
    assert (aff["acl"]["epochs"], aff["acl"]["optim"]["milestones"]) == (100, [40, 60])


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


def test_finetune_settings_layer_per_mode_then_per_method():
    """finetune ← modes.<F> ← method_modes.<method>.<F>: optim merges key by key; unknown keys, bad
    values and all-data training with a best-epoch selection are refused."""
    base = {"epochs": 100, "batch_size": 128, "objective": "trades", "optim": {"lr": 0.1, "milestones": [40, 60]},
            "scenarios": [["P3", "F4"]]}
    rs = {"modes": {"F4": {"data": "all", "select": "last"}},
          "method_modes": {"dynacl": {"F4": {"epochs": 25, "optim": {"milestones": [15, 20]}}}}}
    dyn = P.finetune_settings(base, rs, "dynacl", "F4")
    assert dyn["epochs"] == 25 and dyn["optim"] == {"lr": 0.1, "milestones": [15, 20]} and "scenarios" not in dyn
    assert P.finetune_settings(base, rs, "acl", "F4")["epochs"] == 100 and base["optim"]["milestones"] == [40, 60]
    keys = P.finetune_spec_keys(dyn, adv=True)
    assert keys["train_data"] == "all" and keys["select_by"] == "last" and keys["objective"]["kind"] == "trades"
    assert P.finetune_spec_keys(P.finetune_settings(base), adv=True)["select_by"] == "val_ra"  # the 2020 default
    assert "train_data" not in P.finetune_spec_keys(P.finetune_settings(base), adv=True)
    for bad in ({"F4": {"lr": 0.1}}, {"F4": {"bn": "triple"}}, {"F4": {"data": "all"}}):
        with pytest.raises(ValueError):
            P.finetune_settings(base, {"modes": bad}, "acl", "F4")
