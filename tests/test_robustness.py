"""advss.robustness: AutoAttack vs PGD on the same images, the three suites through the
CLI, CIFAR-10-C files, and the tables/figures from (fake) result files."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from advss import protocol as P
from advss import results
from advss import robustness as R
from advss.report import robustness as RR
from advss.io import AdvssError, load_npz
from conftest import ROOT, TINY_MODEL
from test_autoattack import accuracy, synthetic_data, tiny_model


def test_pick_examples_is_a_seeded_sorted_subset():
    a, b = R.pick_examples(50, 10, seed=3), R.pick_examples(50, 10, seed=3)
    assert torch.equal(a, b) and len(a.unique()) == 10 and torch.equal(a, a.sort().values)
    assert not torch.equal(a, R.pick_examples(50, 10, seed=4))
    assert torch.equal(R.pick_examples(7, None, 0), torch.arange(7)) and len(R.pick_examples(7, 99, 0)) == 7


def aa_spec(eps, n_iter=10):
    return {"threat": {"norm": "linf", "eps": eps, "step": eps / 4, "random_start": True}, "subset_seed": 0,
            "autoattack": {"version": "custom", "n_iter": n_iter, "n_queries": 50, "n_target_classes": 3,
                           "fab_n_iter": 3, "pgd_steps": 20}, "batch_size": 64}


@pytest.mark.parametrize("eps", [1.5 / 255, 8 / 255])
def test_autoattack_never_weaker_than_pgd20_on_the_same_images(eps):
    """At 1.5/255 PGD-20 leaves points robust, so the comparison is informative; at 8/255
    (the protocol's ε) AutoAttack drives the undefended model to ~0."""
    model = tiny_model()
    x, y = synthetic_data(48, seed=21)
    res, arrays = R.eval_autoattack(model, x, y, None, aa_spec(eps))
    assert res["ta"] == pytest.approx(accuracy(model, x, y)) and res["ta"] >= 0.9
    assert res["ra"] <= res["ra_pgd"] and res["ra_inhouse"] <= res["ra_pgd"]
    assert arrays["correct_adv"].sum() <= arrays["correct_pgd"].sum()
    assert res["implementation"].startswith("pyautoattack") and res["components"][2] == "fab-t"  # the primary RA
    assert res["ra_inhouse"] == pytest.approx(arrays["correct_adv_inhouse"].float().mean().item())
    assert res["inhouse"]["left_out"] == ["fab-t"]
    assert not (arrays["correct_adv"] & ~arrays["correct_clean"]).any()  # a wrong clean point is never robust
    stages = [res["per_component"][k] for k in ("clean", *res["components"])]
    assert stages == sorted(stages, reverse=True)
    if eps > 2 / 255:
        assert res["ra"] <= 0.05
    else:
        assert 0 < res["ra_pgd"] < 1


def test_autoattack_settings_refuse_a_cut_standard_version():
    """'standard' means the standard budget: a smaller one must say version: custom (checked at parse time)."""
    assert R.autoattack_settings({"enabled": True})["version"] == "standard"
    assert R.autoattack_settings({"version": "custom", "n_iter": 5})["n_iter"] == 5
    with pytest.raises(AdvssError, match="custom"):
        R.autoattack_settings({"version": "standard", "n_iter": 20})
    with pytest.raises(AdvssError, match="custom"):
        R.eval_autoattack(tiny_model(), *synthetic_data(4, seed=0), None, {**aa_spec(8 / 255), "autoattack": {
            "n_iter": 20, "pgd_steps": 20}})


def test_evaluation_is_fp32_under_a_bf16_caller(tiny_data, trained_model, tmp_path, monkeypatch):
    """bf16 autocast left on by a caller (or a bf16-trained run) must not reach the test-set
    numbers; every result file says so."""
    seen = []
    load = R.load_model

    def recording(*a, **k):
        model = load(*a, **k)
        model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        return model

    monkeypatch.setattr(R, "load_model", recording)
    spec = {"model": TINY_MODEL, "seed": 0, "subset_seed": 0, "n_examples": 4, "batch_size": 4,
            **SUITE_SPECS["unforeseen"]}
    out = tmp_path / "unforeseen.json"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        R.run("unforeseen", spec, tiny_data, [trained_model], out, out.with_suffix(".npz"), "cpu")
    assert seen and set(seen) == {torch.float32}
    assert json.loads(out.read_text())["eval_precision"] == "fp32"


def test_autoattack_refuses_l2():
    spec = aa_spec(0.5)
    spec["threat"]["norm"] = "l2"
    with pytest.raises(AdvssError, match="L∞"):
        R.eval_autoattack(tiny_model(), *synthetic_data(4, seed=0), None, spec)


def test_ensemble_is_the_softmax_average(tmp_path):
    from advss.models import classifier, save_checkpoint

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        paths.append(tmp_path / f"m{seed}.pt")
        save_checkpoint(paths[-1], classifier(TINY_MODEL, 10), TINY_MODEL)
    members = [R.load_model([p], TINY_MODEL, 10, "cpu") for p in paths]
    ens = R.load_model(paths, TINY_MODEL, 10, "cpu")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        want = (members[0](x).softmax(-1) + members[1](x).softmax(-1)) / 2
        assert torch.allclose(ens(x).exp(), want, atol=1e-6)


@pytest.fixture(scope="module")
def trained_model(tiny_data, tmp_path_factory):
    """A tiny ResNet trained for 2 epochs with the one loop (a real advss checkpoint)."""
    from advss.train import train
    from conftest import train_spec

    d = tmp_path_factory.mktemp("model")
    train(train_spec(), tiny_data, d / "model.pt", d / "metrics.csv", d / "meta.json")
    return d / "model.pt"


SUITE_SPECS = {
    "autoattack": {"autoattack": {"version": "custom", "n_iter": 3, "n_queries": 10, "n_target_classes": 2,
                                  "fab_n_iter": 2, "pgd_steps": 20}},
    "unforeseen": {"unforeseen": {"n_iter": 2, "attacks": {"pgd_linf": [8], "elastic": [0.5, 2]},
                                  "step_sizes": {"elastic": 0.3}}},
    "corruptions": {"corruptions": {"root": None, "severities": [1, 5], "corruptions": ["fog", "contrast"]}},
}


@pytest.mark.parametrize("suite", R.SUITES)
def test_cli_writes_json_and_per_example_npz(suite, tiny_data, trained_model, tmp_path):
    from advss.cli import main

    spec = {"model": TINY_MODEL, "threat": {"norm": "linf", "eps": "8/255", "step": "2/255"}, "seed": 0,
            "subset_seed": 0, "n_examples": 16, "batch_size": 8, **SUITE_SPECS[suite]}
    out = tmp_path / "eval" / f"{suite}.json"
    main(["robustness", suite, "--spec", json.dumps(spec), "--data", str(tiny_data), "--model", str(trained_model),
          "--out-json", str(out), "--out-npz", str(out.with_suffix(".npz"))])
    res, npz = json.loads(out.read_text()), load_npz(out.with_suffix(".npz"))
    assert res["suite"] == suite and res["n"] == 16 and res["provenance"]["spec_hash"]
    assert res["eval_precision"] == "fp32"
    assert np.array_equal(npz["idx"], R.pick_examples(100, 16, 0).numpy())
    assert res["ta"] == pytest.approx(npz["correct_clean"].mean())
    if suite == "autoattack":
        assert res["ra"] == pytest.approx(npz["correct_adv"].mean()) and res["ra"] <= res["ra_pgd"]
        assert res["ra_inhouse"] == pytest.approx(npz["correct_adv_inhouse"].mean())
    elif suite == "unforeseen":
        assert set(res["acc"]) == {"pgd_linf", "elastic"} and set(res["acc"]["elastic"]) == {"0.5", "2"}
        assert res["calibration"]["elastic"]["calibrated"] and "advex-uar" in res["calibration"]["elastic"]["source"]
        assert res["acc"]["elastic"]["2"] == pytest.approx(npz["elastic@2"].mean())
    else:
        assert res["source"] == {"fog": "generated", "contrast": "generated"}
        cells = [v for per in res["acc"].values() for v in per.values()]
        assert res["mean"] == pytest.approx(np.mean(cells)) and len(cells) == 4


def test_official_cifar10c_files_are_used_and_checked(tmp_path):
    n = 6  # test images (and rows per severity)
    imgs = np.random.default_rng(0).integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(n) % 3, 5).astype(np.uint8)
    np.save(tmp_path / "fog.npy", imgs)
    np.save(tmp_path / "labels.npy", labels)
    idx = torch.tensor([1, 4])
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    y = torch.from_numpy(labels[[1, 4]].astype(np.int64))
    xc, source = R.corrupted_images(x, y, idx, "fog", 3, tmp_path, seed=0)
    assert source == "cifar10-c"
    assert torch.equal(xc, torch.from_numpy(imgs[2 * n + idx.numpy()]).permute(0, 3, 1, 2))
    assert R.corrupted_images(x, y, idx, "contrast", 3, tmp_path, seed=0)[1] == "generated"  # no contrast.npy
    with pytest.raises(AdvssError, match="labels"):
        R.corrupted_images(x, (y + 1) % 3, idx, "fog", 3, tmp_path, seed=0)


def test_generated_corruptions_are_deterministic_and_differ_per_cell():
    x = (torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    idx = torch.arange(4)
    a = R.corrupted_images(x, None, idx, "gaussian_noise", 3, None, seed=0)[0]
    assert torch.equal(a, R.corrupted_images(x, None, idx, "gaussian_noise", 3, None, seed=0)[0])
    assert not torch.equal(a, R.corrupted_images(x, None, idx, "gaussian_noise", 3, None, seed=1)[0])


# ------------------------------------------------------------------ reports from fake result files
P3F4 = [(P.pretrain_id(t, "P3"), "full-adv") for t in P.TASKS]


def fake_results(run_dir):
    """Result files as the jobs write them, with known numbers."""
    def write(src, ft, suite, obj, seed=0):
        path = results.eval_path(run_dir, src, ft, seed, suite)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"suite": suite, "n": 100, **obj}))

    for k, (src, ft) in enumerate(P3F4 + [P.ROTAUX]):
        write(src, ft, "unforeseen", {"ta": 0.8, "acc": {"pgd_linf": {"4": 0.5 - 0.1 * k, "8": 0.3},
                                                         "snow": {"0.25": 0.6}}})
    for k, (src, ft) in enumerate([("scratch", "full-std"), ("scratch", "full-adv")]):
        write(src, ft, "autoattack", {"ta": 0.9, "ra": 0.1 * k, "ra_pgd": 0.2 * k, "pgd_steps": 20, "eps": 8 / 255,
                                      "per_component": {"clean": 0.9, "apgd-ce": 0.15 * k, "square": 0.1 * k}})
        write(src, ft, "corruptions", {"ta": 0.9, "source": {"fog": "generated", "snow": "generated"}, "mean": 0.5,
                                       "acc": {"fog": {"1": 0.8, "5": 0.4}, "snow": {"1": 0.6, "5": 0.2}}})
    ens = results.ensemble_path(run_dir, ["rotation", "jigsaw"], 0)
    ens.parent.mkdir(parents=True)
    ens.write_text(json.dumps({"ta": 0.85, "ra": 0.25, "ra_pgd": 0.3, "pgd_steps": 20, "n": 100, "ra_inhouse": 0.275,
                               "per_component": {"clean": 0.85, "apgd-ce": 0.3, "square": 0.25}}))


def report_spec(run_dir):
    return {"run": "fake", "run_dir": str(run_dir), "tasks": list(P.TASKS), "seeds": [0], "eps": "8/255",
            "config_hash": "0" * 16, "autoattack_jobs": [["scratch", "full-std"], ["scratch", "full-adv"]],
            "ensembles": [["jigsaw", "rotation"]], "unforeseen_jobs": [list(j) for j in P3F4 + [P.ROTAUX]],
            "corruption_jobs": [["scratch", "full-std"], ["scratch", "full-adv"]]}


def test_tables_and_figures_from_result_files(tmp_path):
    run_dir = tmp_path / "run"
    fake_results(run_dir)
    spec, out = report_spec(run_dir), tmp_path / "out"

    aa = RR.autoattack_table(spec, out / "autoattack")
    assert list(aa["model"]) == ["(P1,F3)", "(P1,F4)", "Ensemble Jigsaw+Rotation"]
    assert list(aa["ra_aa"]) == pytest.approx([0, 10, 25]) and list(aa["ra_pgd"]) == pytest.approx([0, 20, 30])
    assert "RA AutoAttack" in (out / "autoattack.md").read_text()
    assert list(aa["ra_aa_inhouse"].fillna(-1)) == pytest.approx([-1, -1, 27.5])  # the cross-check beside it
    assert "| RA in-house AA |" in (out / "autoattack.md").read_text()

    uf = RR.unforeseen_table(spec, out / "unforeseen")
    assert len(uf) == 4 * 4  # (clean + 3 attack/ε cells) × 4 models
    md = (out / "unforeseen.md").read_text()
    assert "One-shot AT + rotation aux." in md and "(P3,F4) Rotation" in md
    assert "| snow† |" in md and "| pgd_linf |" in md and "UNCALIBRATED" in md  # ImageNet-100 ε, marked

    RR.cifar10c_table(spec, out / "cifar10c")
    c = pd.read_csv(out / "cifar10c.csv", dtype={"severity": str})
    row = c[(c["model"] == "(P1,F4)") & (c["severity"] == "mean")].iloc[0]
    assert row["fog"] == pytest.approx(60) and row["mean"] == pytest.approx(50) and row["clean"] == pytest.approx(90)
    assert c[(c["model"] == "(P1,F4)") & (c["severity"] == "5")].iloc[0]["mean"] == pytest.approx(30)

    rot = RR.per_attack_accuracy(spec, [P3F4[0], P.ROTAUX])
    assert rot["(P3,F4) Rotation"] == pytest.approx({"clean": 80, "pgd_linf": 40, "snow": 60})
    assert rot["One-shot AT + rotation aux."]["pgd_linf"] == pytest.approx(100 * (0.5 - 0.3 + 0.3) / 2)
    for fig in ("figure3", "figure4"):
        getattr(RR, fig)(spec, out / fig)
        assert all((out / f"{fig}.{ext}").stat().st_size > 1000 for ext in ("png", "pdf"))

    assert results.autoattack_column(run_dir, "scratch", "full-adv", 0) == pytest.approx(10)
    assert results.autoattack_column(run_dir, "scratch", "partial-adv", 0) is None
    assert results.autoattack_ensemble_column(run_dir, ["rotation", "jigsaw"], 0) == pytest.approx(25)


@pytest.mark.slow
def test_workflow_builds_the_robustness_outputs(tmp_path, mini_run):
    """The mini config end to end for the robustness targets: jobs, files, AA <= PGD-20."""
    from test_workflow import job_counts, snakemake

    cfg = ROOT / "tests/configs/mini.yaml"
    targets = [f"results/mini/tables/{t}.csv" for t in ("autoattack", "unforeseen", "cifar10c")]
    targets.append("results/mini/figures/figure4.png")
    counts = job_counts(snakemake(*targets, "-n", "--configfile", cfg, cwd=tmp_path).stdout)  # an empty dir
    assert counts["robustness"] == 4 + 3 + 1  # AA: (P1,F3) + 3 (P3,F4); unforeseen: 3 (P3,F4); corruptions: (P1,F4)
    assert counts["autoattack_ensemble"] == 1
    run = mini_run / "results/mini"
    for t in targets:
        assert (mini_run / t).stat().st_size > 0, t
    for path in run.glob("finetune/*/*/seed0/eval/autoattack.json"):
        res = json.loads(path.read_text())
        assert res["ra"] <= res["ra_pgd"] and res["n"] == 20, path
    assert (run / "figures/figure4.pdf").stat().st_size > 1000
    assert "gaussian noise" in (run / "tables/cifar10c.md").read_text()


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: r["unforeseen"]["attacks"].update(rain=[1]), "rain"),
    (lambda r: r["corruptions"].update(severities=[0, 6]), "severities"),
    (lambda r: r["autoattack"].update(n_iters=5), "n_iters"),
    (lambda r: r["unforeseen"].pop("attacks"), "attacks"),
])
def test_schema_refuses_bad_sections(mutate, needle):
    import yaml
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    section = yaml.safe_load((ROOT / "config/demo.yaml").read_text())["robustness"]
    validate(section, ROOT / "workflow/schemas/robustness.schema.yaml")  # the demo's own section is valid
    mutate(section)
    with pytest.raises(WorkflowError, match=needle):
        validate(section, ROOT / "workflow/schemas/robustness.schema.yaml")


def test_figures_mark_the_uncalibrated_attacks(monkeypatch, tmp_path):

    saved = []
    monkeypatch.setattr(RR, "save_figure", lambda fig, prefix: saved.append(fig))
    RR.plot_unforeseen({"m": {"clean": 90, "pgd_linf": 50, "fog": 40, "snow": 30}}, "t", tmp_path / "f")
    fig = saved[0]
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
    assert {"fog†", "snow†", "pgd_linf"} <= set(ticks) and "fog" not in ticks
    assert any("UNCALIBRATED" in t.get_text() for t in fig.texts)


def test_a_corruptions_fix_reruns_the_cifar10c_jobs_only(tmp_path):
    """protocol.REVISION['corruptions'] reaches the corruption suite's specs, not AutoAttack's
    or the unforeseen attacks' (hours on a GPU, and untouched by advss/corruptions.py)."""
    import shlex

    from test_workflow import snakemake

    targets = [f"results/mini/tables/{t}.csv" for t in ("autoattack", "unforeseen", "cifar10c")]
    p = snakemake(*targets, "-n", "-p", "--configfile", ROOT / "tests/configs/mini.yaml", cwd=tmp_path)
    revisions = {}
    for line in p.stdout.splitlines():
        if line.startswith("Shell command: python -m advss robustness "):
            args = shlex.split(line.removeprefix("Shell command: ").split(" > ")[0])
            revisions.setdefault(args[4], []).append(json.loads(args[args.index("--spec") + 1])["revision"])
    assert set(revisions) == {"autoattack", "unforeseen", "corruptions"}
    assert all(r.get("corruptions") == P.REVISION["corruptions"] for r in revisions["corruptions"])
    assert not any("corruptions" in r for s in ("autoattack", "unforeseen") for r in revisions[s])
