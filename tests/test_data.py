"""Datasets: procedural set, idx reader, split, on-device augmentation."""
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from advss import data as D
from advss.io import AdvssError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_procedural_is_seeded_balanced_and_varied():
    x1, y1 = D.make_procedural(20, seed=7)
    x2, y2 = D.make_procedural(20, seed=7)
    x3, _ = D.make_procedural(20, seed=8)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.dtype == torch.uint8 and x1.shape == (200, 3, 32, 32)
    assert torch.bincount(y1).tolist() == [20] * 10
    # an upright world: the top half is brighter than the bottom on average (rotation is learnable)
    assert x1[:, :, :16].float().mean() > x1[:, :, 16:].float().mean() + 5


def test_augment_is_a_padded_shift_and_a_flip():
    x = torch.rand(64, 3, 32, 32)
    out = D.augment(x, torch.Generator().manual_seed(0))
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(len(x)):
        cands = [xp[i, :, dy:dy + 32, dx:dx + 32] for dy in range(9) for dx in range(9)]
        cands += [c.flip(-1) for c in cands]
        assert any(torch.equal(out[i], c) for c in cands), i
    assert not torch.equal(out, x)


def _write_idx(path, arr):
    dims = arr.shape
    header = struct.pack(">I", 0x0800 | len(dims)) + struct.pack(">" + "I" * len(dims), *dims)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_idx_reader_on_fake_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 20), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    out = D.load_fashion_mnist(tmp_path)
    x, y = out["train"]
    assert x.shape == (20, 3, 32, 32) and y.shape == (20,)
    assert x[:, :, :2].sum() == 0 and torch.equal(x[:, 0], x[:, 2])  # zero padding, grey replicated
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(AdvssError, match="t10k-labels"):
        D.load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not FASHION.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_loads():
    out = D.load_fashion_mnist(FASHION)
    assert out["train"][0].shape == (60000, 3, 32, 32) and out["test"][0].shape == (10000, 3, 32, 32)
    assert torch.bincount(out["train"][1]).tolist() == [6000] * 10


def test_prepare_split_is_seeded_and_disjoint(tmp_path):
    cfg = {"name": "procedural", "procedural": {"n_per_class": 10, "n_test_per_class": 2, "seed": 0},
           "val_fraction": 0.2, "split_seed": 3}
    D.prepare(cfg, tmp_path / "a.pt")
    D.prepare(cfg, tmp_path / "b.pt")
    a, b = D.load(tmp_path / "a.pt", "cpu"), D.load(tmp_path / "b.pt", "cpu")
    assert torch.equal(a["val"][0], b["val"][0])
    assert len(a["fit"][0]) == 80 and len(a["val"][0]) == 20 and len(a["test"][0]) == 20
    raw = torch.load(tmp_path / "a.pt", weights_only=True)
    assert not set(raw["val_idx"].tolist()) & set(raw["fit_idx"].tolist())


def test_missing_dataset_directory_names_it(tmp_path):
    with pytest.raises(AdvssError, match="nowhere"):
        D.prepare({"name": "fashion-mnist", "root": str(tmp_path / "nowhere")}, tmp_path / "d.pt")
    assert not (tmp_path / "d.pt").exists()


def _no_network(monkeypatch):
    """No DNS and no connection, as on an offline compute node: what urllib meets first."""
    import socket

    def refuse(*a, **k):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (network unavailable in this test)")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_a_download_without_network_is_one_clear_error(tmp_path, monkeypatch, capsys, name, folder):
    """data.download: true on a machine without network: no urllib traceback, one AdvssError
    naming the dataset, the root and the folder to copy there (from `advss prepare` too)."""
    import json

    from advss.cli import main

    _no_network(monkeypatch)
    root = tmp_path / "empty"
    with pytest.raises(AdvssError) as e:
        D.prepare({"name": name, "root": str(root), "download": True}, tmp_path / "d.pt")
    msg = str(e.value)
    assert name in msg and str(root) in msg and f"{root / folder}/" in msg and "no network" in msg
    assert "URLError" in msg and "data.download: true on a machine with internet" in msg
    with pytest.raises(SystemExit) as ex:
        main(["prepare", "--spec", json.dumps({"name": name, "root": str(root), "download": True}),
              "--out", str(tmp_path / "d.pt")])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "Traceback" not in err and err.startswith("advss prepare: error: data.download")
    # without download, the same folder is named
    with pytest.raises(AdvssError, match=f"{folder}/"):
        D.prepare({"name": name, "root": str(root), "download": False}, tmp_path / "d.pt")
