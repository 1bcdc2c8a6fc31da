"""The fast path (bf16 autocast, channels-last, on-device data) is the same method."""
import csv
import json

import pytest
import torch

from advss import bench, data as D
from advss.train import fast_settings, train
from conftest import TINY_MODEL, train_spec


def test_fast_settings_auto_is_off_on_cpu_and_on_on_cuda():
    assert fast_settings({}, torch.device("cpu")) == {"bf16": False, "channels_last": False, "compile": False}
    assert fast_settings({}, torch.device("cuda")) == {"bf16": True, "channels_last": True, "compile": True}
    forced = fast_settings({"fast": {"precision": "bf16", "channels_last": True, "compile": False}}, torch.device("cpu"))
    assert forced == {"bf16": True, "channels_last": True, "compile": False}


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


def test_benchmark_prints_and_records_every_mode(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rec = bench.main(["--arch", "resnet-tiny", "--width", "8", "--n", "256", "--batch", "32", "--ref-batch", "32",
                      "--iters", "2", "--workers", "0", "--check-steps", "2", "--check-n", "64", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["modes"].keys() == {"st", "at", "eval"} == rec["modes"].keys()
    for m in saved["modes"].values():
        assert m["fast_img_s"] > 0 and m["ref_img_s"] > 0
        assert m["ratio"] == pytest.approx(m["fast_img_s"] / m["ref_img_s"], rel=0.02)
    assert "s/epoch" in capsys.readouterr().out
