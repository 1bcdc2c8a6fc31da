"""The extension cost the README states, measured by doing it in a copy of the package:
a new pretext task (one module + one TASKS line) is pretrained through `python -m advss
pretrain`; a new table (one builder + one REGISTRY line) is built from its metrics through
`python -m advss table`; a new robustness suite (one evaluator + its EVALUATORS line in
robustness.py, its name in protocol.ROBUSTNESS_SUITES) scores a fine-tuned model through
`python -m advss robustness`. The copy still passes the layering test, and exactly those
six files differ from the original."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys

import pandas as pd

from conftest import ROOT, train_spec

TASK = '''"""Flip: predict whether the image is mirrored left-right (2 classes)."""
import torch

from advss.pretext.base import Task


class Flip(Task):
    name = "flip"
    n_classes = 2

    def __init__(self, state=None):
        pass

    def make_batch(self, x, y, gen):
        k = torch.randint(0, 2, (len(x),), generator=gen, device=gen.device).to(x.device)
        return torch.where(k[:, None, None, None].bool(), x.flip(-1), x), k
'''

TABLE = '''"""The pretraining curve of a run, one row per epoch."""
import pandas as pd

from advss.tables import write_table


def curve(spec: dict, prefix):
    df = pd.read_csv(spec["metrics"])
    return write_table(df.astype(str), df, prefix, f"Pretraining curve, {len(df)} epochs", spec["config_hash"])
'''

SUITE = '''

def eval_noise(model, x, y, x_uint8, spec):
    """Accuracy under Gaussian noise of std `noise.sigma` (seeded)."""
    import torch

    from advss.evaluate import predict_correct

    gen = torch.Generator(device=x.device).manual_seed(int(spec["subset_seed"]))
    noisy = (x + spec["noise"]["sigma"] * torch.randn(x.shape, generator=gen, device=x.device)).clamp(0, 1)
    clean, ok = predict_correct(model, x, y, 64), predict_correct(model, noisy, y, 64)
    return {"ta": clean.float().mean().item(), "acc": ok.float().mean().item()}, {"correct_clean": clean,
                                                                                  "correct_noise": ok}


EVALUATORS["noise"] = eval_noise
'''
SUITES_LINE = 'ROBUSTNESS_SUITES = ("autoattack", "unforeseen", "corruptions")'

MARK_TASK = "    # --- more tasks register here"
MARK_TABLE = "    # --- more tables and figures register here"


def _add_line(path, marker, line, import_line):
    s = path.read_text()
    assert s.count(marker) == 1, f"{path}: the registry marker moved"
    s = s.replace(marker, line + marker)
    first_import = s.index("\nfrom advss")
    path.write_text(s[:first_import + 1] + import_line + s[first_import + 1:])


def _differing(a, b, rel=""):
    """Files (relative paths) that are new in b or differ from a."""
    cmp = filecmp.dircmp(a, b, ignore=["__pycache__"])
    out = [os.path.join(rel, f) for f in cmp.right_only + cmp.diff_files]
    for sub in cmp.common_dirs:
        out += _differing(os.path.join(a, sub), os.path.join(b, sub), os.path.join(rel, sub))
    return sorted(out)


def test_a_new_task_table_and_suite_cost_six_files(tmp_path, tiny_data):
    copy = tmp_path / "advss"
    shutil.copytree(ROOT / "advss", copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "pretext" / "flip.py").write_text(TASK)
    _add_line(copy / "pretext" / "__init__.py", MARK_TASK, '    "flip": Flip,\n', "from advss.pretext.flip import Flip\n")
    (copy / "report" / "curves.py").write_text(TABLE)
    _add_line(copy / "report" / "__init__.py", MARK_TABLE, '    "curve": curves.curve,\n',
              "from advss.report import curves\n")
    robustness = copy / "robustness.py"
    robustness.write_text(robustness.read_text() + SUITE)
    protocol = copy / "protocol.py"
    assert protocol.read_text().count(SUITES_LINE) == 1, "protocol.ROBUSTNESS_SUITES moved"
    protocol.write_text(protocol.read_text().replace(SUITES_LINE, SUITES_LINE[:-1] + ', "noise")'))
    assert _differing(ROOT / "advss", copy) == ["pretext/__init__.py", "pretext/flip.py", "protocol.py",
                                               "report/__init__.py", "report/curves.py", "robustness.py"]

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "advss", *a], cwd=tmp_path, env=env,  # noqa: E731
                                    capture_output=True, text=True, timeout=600)
    spec = train_spec(stage="pretrain", task="flip", epochs=2)
    out = tmp_path / "out"
    p = run("pretrain", "--spec", json.dumps(spec), "--data", str(tiny_data), "--out-model", str(out / "model.pt"),
            "--out-metrics", str(out / "metrics.csv"), "--out-meta", str(out / "meta.json"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "meta.json").read_text())["spec"]["task"] == "flip"
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 2 and (metrics["train_loss"] > 0).all()

    p = run("table", "curve", "--spec", json.dumps({"metrics": str(out / "metrics.csv"), "config_hash": "abc123"}), "--out",
            str(out / "tables" / "curve.md"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert {f.suffix for f in (out / "tables").iterdir()} == {".csv", ".md", ".tex", ".html"}
    assert "Pretraining curve, 2 epochs config abc123" in (out / "tables" / "curve.md").read_text()

    ft = train_spec(epochs=1)
    p = run("finetune", "--spec", json.dumps(ft), "--data", str(tiny_data), "--out-model", str(out / "ft.pt"),
            "--out-metrics", str(out / "ft.csv"), "--out-meta", str(out / "ft.json"))
    assert p.returncode == 0, p.stderr[-3000:]
    spec = {"model": ft["model"], "threat": ft["threat"], "seed": 0, "subset_seed": 0, "n_examples": 32,
            "noise": {"sigma": 0.1}}
    p = run("robustness", "noise", "--spec", json.dumps(spec), "--data", str(tiny_data), "--model", str(out / "ft.pt"),
            "--out-json", str(out / "noise.json"), "--out-npz", str(out / "noise.npz"))
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((out / "noise.json").read_text())
    assert res["suite"] == "noise" and res["n"] == 32 and 0 <= res["acc"] <= 1

    # the copy keeps the layering rules without a new entry in them
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "test_layering.py", tmp_path / "tests")
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_layering.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:]


# The contrastive family (issue 20), as measured: the files of advss/ that name it. The
# training loop, the step, evaluation and the fast path are not among them: the family went
# through the Task interface (set_epoch, adversarial: pretext/base.py, and one set_epoch call
# in train.py, which name no task) and one objective.
CONTRASTIVE_FILES = {
    "pretext/contrastive.py",  # the task: views, NT-Xent, dual BN, DynACL's schedule
    "pretext/__init__.py",     # its TASKS line
    "objectives.py",           # the acl objective and its OBJECTIVES line
    "protocol.py",             # its pretrained-model ids, spec keys, published figures
    "gpuquick.py",             # the quick GPU check's ACL-pretraining row (issue 20's s/epoch)
    "report/successors.py",    # its table
    "claims.py",               # its claims row
    "gpucheck.py",             # its GPU-path kinds
    "report/compute.py",       # the compute table's budget caption (two views, the momentum view)
}


def test_the_contrastive_family_touches_the_files_the_readme_states():
    import re

    named = {str(p.relative_to(ROOT / "advss")) for p in (ROOT / "advss").rglob("*.py")
             if re.search(r"contrastive", p.read_text(), re.I)}
    assert named == CONTRASTIVE_FILES
    for core in ("train.py", "step.py", "evaluate.py", "fast.py"):
        assert not re.search(r"contrastive|DualBatchNorm|dynacl|nt_xent", (ROOT / "advss" / core).read_text(), re.I)
    readme = (ROOT / "README.md").read_text()
    assert f"**{len(CONTRASTIVE_FILES)} files** of `advss/` name the contrastive family" in readme
