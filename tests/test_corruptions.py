"""CIFAR-10-C corruptions and loader (advss.corruptions)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advss.corruptions import CORRUPTIONS, corrupt, load_cifar10c


def images(n=8, seed=0):
    """Smooth random uint8 images with some texture, like downsampled photos."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear", align_corners=False)
    return (x * 220 + 15 * torch.rand(n, 3, 32, 32, generator=g)).to(torch.uint8)


def test_fifteen_corruptions():
    assert len(CORRUPTIONS) == 15 == len(set(CORRUPTIONS))


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_deterministic_shape_dtype_range(corruption):
    x = images()
    a, b = corrupt(x, corruption, 3, seed=7), corrupt(x, corruption, 3, seed=7)
    assert torch.equal(a, b)
    assert a.shape == x.shape and a.dtype == torch.uint8
    xf = x.float() / 255
    out = corrupt(xf, corruption, 3, seed=7)
    assert out.shape == xf.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert corrupt(x[0], corruption, 1, seed=0).shape == x[0].shape  # single image


# elastic_transform is exempt: at make_cifar_c.py's parameters severity 1 is a pure random
# affine with 2.56 px corner jitter, larger in pixel terms than severity 5's 0.96 px + small elastic field.
@pytest.mark.parametrize("corruption", [c for c in CORRUPTIONS if c != "elastic_transform"])
def test_severity_5_farther_than_severity_1(corruption):
    x = images(seed=1)
    dist = lambda s: (corrupt(x, corruption, s, seed=3).float() - x.float()).abs().mean().item()
    assert dist(5) > dist(1) > 0


def test_elastic_changes_image_at_all_severities():
    x = images(seed=2)
    assert all((corrupt(x, "elastic_transform", s, seed=0).float() - x.float()).abs().mean() > 1 for s in (1, 5))


def test_loader_reads_fake_files(tmp_path):
    n = 3  # images per severity
    imgs = np.arange(5 * n * 32 * 32 * 3, dtype=np.int64).reshape(5 * n, 32, 32, 3) % 251
    np.save(tmp_path / "fog.npy", imgs.astype(np.uint8))
    np.save(tmp_path / "labels.npy", (np.arange(5 * n) % 10).astype(np.uint8))
    x, y = load_cifar10c(tmp_path, "fog", 2)
    assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(imgs[n:2 * n].astype(np.uint8)).permute(0, 3, 1, 2))
    assert y.tolist() == [3, 4, 5]


def test_loader_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        load_cifar10c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((5, 32, 32, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        load_cifar10c(tmp_path, "snow", 1)
    with pytest.raises(ValueError, match="unknown corruption"):
        load_cifar10c(tmp_path, "rain", 1)
    with pytest.raises(ValueError, match="severity"):
        load_cifar10c(tmp_path, "snow", 6)
