"""The fast path (bf16 autocast, channels-last, on-device data) is the same method."""
import csv
import json

import pytest
import torch

from advss import bench, data as D
from advss.fast import fast_settings
from advss.train import train
from conftest import ROOT, TINY_MODEL, train_spec


def _fake_gpu(monkeypatch, cc, name):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: cc)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: name)


def test_fast_settings_auto_is_off_on_cpu_and_on_on_cuda(monkeypatch):
    keys = ("bf16", "channels_last", "compile", "graphs")
    pick = lambda f: tuple(f[k] for k in keys)  # noqa: E731
    assert pick(fast_settings({}, torch.device("cpu"))) == (False, False, False, "off")
    _fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3")
    assert pick(fast_settings({}, torch.device("cuda"))) == (True, True, True, "cuda")
    forced = fast_settings({"fast": {"precision": "bf16", "channels_last": True, "compile": False,
                                     "cuda_graphs": True}}, torch.device("cpu"))
    assert pick(forced) == (True, True, False, "fake")  # graphs forced on a CPU: the plumbing test
    assert forced["why"]["precision"].startswith("bf16: forced by the spec")


@pytest.mark.parametrize("cc,name,bf16,compile_", [
    ((7, 0), "Tesla V100-SXM2-32GB", False, True),      # no native bf16; Triton runs on Volta
    ((8, 0), "NVIDIA A100-SXM4-80GB", True, True),
    ((6, 0), "Tesla P100-PCIE-16GB", False, False),     # Triton refuses cc < 7.0
])
def test_auto_follows_the_devices_capability_and_says_why(monkeypatch, cc, name, bf16, compile_):
    _fake_gpu(monkeypatch, cc, name)
    f = fast_settings({"fast": {"precision": "auto", "compile": "auto", "cuda_graphs": "auto"}}, torch.device("cuda"))
    assert (f["bf16"], f["compile"], f["graphs"], f["tf32"]) == (bf16, compile_, "cuda", False)
    assert name in f["device"] and f"{cc[0]}.{cc[1]}" in f["device"]
    assert f["why"]["precision"].startswith("bf16: native" if bf16 else "fp32: bf16 is not native")
    assert f["why"]["compile"].startswith("on: inductor" if compile_ else "off: inductor's Triton backend needs")
    assert f["why"]["graphs"] == "cuda: CUDA graphs wherever CUDA is"
    forced_fp32 = fast_settings({"fast": {"precision": "fp32"}}, torch.device("cuda"))
    assert forced_fp32["tf32"] == (cc >= (8, 0))  # TF32 where the device has it


def test_meta_records_each_fast_decision_and_the_attention_kernel(tiny_data, tmp_path):
    d = tmp_path / "m"
    train(train_spec(epochs=1), tiny_data, d / "m.pt", d / "m.csv", d / "meta.json", device="cpu", log=lambda m: None)
    meta = json.loads((d / "meta.json").read_text())
    assert set(meta["fast"]["why"]) >= {"precision", "compile", "channels_last", "graphs", "sdpa"}
    assert meta["fast"]["sdpa"] == "auto" and meta["fast"]["device"] == "a CPU"


def test_bf16_pgd20_ra_within_half_a_point_of_fp32():
    x, y = D.make_procedural(100, seed=0)
    check = bench.numerical_check(TINY_MODEL, x, y, torch.device("cpu"), n_eval=1000, train_steps=40, bs=64)
    assert 5 < check["ra_fp32"] < 95, check  # a model that is neither broken nor trivially robust
    assert check["diff_pp"] <= 0.5, check


def _curve(tmp, data, fast):
    spec = train_spec(epochs=3, batch_size=32, fast=fast)
    d = tmp / json.dumps(fast).replace(" ", "").replace('"', "").replace(":", "").replace(",", "")
    train(spec, data, d / "m.pt", d / "m.csv", d / "meta.json", device="cpu", log=lambda m: None)
    with open(d / "m.csv") as f:
        return [(float(r["train_loss"]), float(r["val_ta"])) for r in csv.DictReader(f)]


def test_training_curves_of_fast_and_reference_paths_agree(tiny_data, tmp_path):
    ref = _curve(tmp_path, tiny_data, {"precision": "fp32", "channels_last": False, "compile": False})
    fast = _curve(tmp_path, tiny_data, {"precision": "bf16", "channels_last": True, "compile": False})
    for (l_ref, ta_ref), (l_fast, ta_fast) in zip(ref, fast):
        assert abs(l_ref - l_fast) < 0.1 * l_ref + 0.02   # same loss curve up to bf16 rounding
        assert abs(ta_ref - ta_fast) <= 0.15               # 30 validation images: ±4 images
    assert fast[-1][0] < fast[0][0]                        # and it learns


def test_benchmark_times_the_pipeline_loop_and_records_it(tmp_path, capsys):
    """A smoke run of the benchmark on the code path the jobs take. No timing is asserted
    (timings under load vary): only that every figure is there, positive and consistent."""
    out = tmp_path / "bench.json"
    rec = bench.main(["--config", str(ROOT / "config" / "demo.yaml"), "--arch", "resnet-tiny", "--width", "4",
                      "--batch-sizes", "8", "--batches", "3", "--ref-iters", "2", "--workers", "0", "--eval-n", "16",
                      "--check-steps", "2", "--check-n", "32", "--work", str(tmp_path / "w"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["pipeline"]) == {"at-8", "st-8"} == set(rec["pipeline"])
    for m in saved["pipeline"].values():
        assert m["img_s"] > 0 and m["s_epoch_45k"] > 0 and m["recompiles"] == 0
    assert saved["reference_at_128_img_s"] > 0 and saved["plain_bf16_at_128_img_s"] > 0
    assert saved["eval_pgd20_img_s"] > 0 and saved["recompiles_after_warmup"] == 0
    pe = saved["protocol_estimate"]
    assert pe["training_jobs"] > 0 and pe["gpu_hours"] > 0
    assert "s/45k epoch" in capsys.readouterr().out


def test_protocol_estimate_counts_the_paper_jobs():
    """The paper config: 6 pretrainings, 3 ensemble pretrainings (AP+SE, two AP+DPE signs) and
    the fine-tunings of Table 3 plus the ensembles', each evaluated once."""
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    jobs, n_evals = bench.protocol_jobs(cfg)
    kinds = [j[0] for j in jobs]
    assert kinds.count("pretrain-adv") == 3 and kinds.count("pretrain-std") == 3
    assert kinds.count("ensemble-se") == 1 and kinds.count("ensemble-dpe") == 2
    assert n_evals == kinds.count("finetune-adv") + kinds.count("finetune-std")
    est = bench.protocol_estimate(cfg, {"at": 10.0, "st": 1.0}, eval_img_s=1000.0)
    ft_at = kinds.count("finetune-adv") * 100 * 10.0
    assert est["train_gpu_hours"] * 3600 >= ft_at  # at least the AT fine-tunings' 100 epochs × 10 s
    # every fine-tuning validates TA and PGD RA on the 5,000 validation images every epoch
    n_ft = kinds.count("finetune-adv") + kinds.count("finetune-std")
    matched = [j for j in jobs if j[0] == "finetune-adv" and j[1] != cfg["finetune"]["epochs"]]
    assert [j[1] for j in matched] == [cfg["pretrain"]["epochs"] + cfg["finetune"]["epochs"]]  # the matched baseline
    assert all(nv == 5000 and ra for k, _, _, nv, ra in jobs if k.startswith("finetune"))
    assert est["validation_gpu_hours"] * 3600 >= n_ft * 100 * 5000 / 1000.0 - 180
    assert est["gpu_hours"] >= est["train_gpu_hours"] + est["validation_gpu_hours"] - 0.1
