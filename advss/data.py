"""Datasets as uint8 tensors, seeded splits, and a loader that augments on the device.

Every dataset becomes one file (`prepare`) holding uint8 N×3×H×W train/test
tensors, labels and the seeded validation indices; training jobs read that file
only, so compute nodes never touch the network.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from advss.io import AdvssError, torch_load, torch_save

DATASETS = ("procedural", "cifar10", "cifar100", "fashion-mnist", "imagefolder")


# ------------------------------------------------------------ procedural set
def _shape_masks(kind: np.ndarray, cx, cy, r, yy, xx):
    """Boolean N×H×W masks of 10 upright shapes; each has a canonical 'up' so that
    rotation and patch order are recoverable from the picture."""
    dx, dy = xx - cx[:, None, None], yy - cy[:, None, None]
    r = r[:, None, None]
    ax, ay = np.abs(dx), np.abs(dy)
    masks = [
        (dx**2 + dy**2) <= r**2,                                   # 0 disc
        (ax <= r) & (ay <= r * 0.6),                               # 1 wide bar
        (dy <= r) & (dy >= -r) & (ax <= (dy + r) * 0.5),           # 2 triangle pointing up
        ((ax <= r * 0.3) & (ay <= r)) | ((ay <= r * 0.3) & (ax <= r)),  # 3 plus
        ((dx**2 + dy**2) <= r**2) & ((dx**2 + dy**2) >= (0.55 * r) ** 2),  # 4 ring
        (ax + ay) <= r,                                            # 5 diamond
        ((ax <= r) & (dy >= -r) & (dy <= -r * 0.5)) | ((ax <= r * 0.3) & (ay <= r)),  # 6 letter T
        ((dx >= -r) & (dx <= -r * 0.5) & (ay <= r)) | ((dy >= r * 0.5) & (dy <= r) & (ax <= r)),  # 7 letter L
        (dy >= 0) & (dy <= r) & (dx**2 + dy**2 <= r**2),           # 8 half disc (flat side up)
        ((ax <= r) & (ay <= r)) & ~((ax <= r * 0.5) & (dy >= -r * 0.2)),  # 9 cup (open at the bottom)
    ]
    out = np.zeros(kind.shape + yy.shape, dtype=bool)
    for k, m in enumerate(masks):
        sel = kind == k
        out[sel] = np.broadcast_to(m, (len(kind),) + yy.shape)[sel]
    return out


def make_procedural(n_per_class: int, seed: int, size: int = 32):
    """A seeded offline image set: 10 shape classes on a top-lit background.

    The background brightens towards the top and each shape has an upright pose,
    so Rotation and Jigsaw are learnable; the class is the shape (with a loose
    class colour, so a tiny CNN learns it in a few epochs), under random colour
    jitter, position, size and pixel noise so it is not trivial.
    """
    rng = np.random.default_rng(seed)
    n = 10 * n_per_class
    y = np.repeat(np.arange(10), n_per_class)
    rng.shuffle(y)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.25, 0.35, n) * size
    cx = rng.uniform(r, size - r)
    cy = rng.uniform(r, size - r)
    mask = _shape_masks(y, cx, cy, r, yy, xx)
    sky = rng.uniform(0.2, 0.9, (n, 3, 1, 1)).astype(np.float32)       # background hue
    light = (1.0 - 0.6 * yy / size)[None, None]                         # brighter at the top
    img = sky * light + 0.15 * (xx / size)[None, None] * rng.uniform(-1, 1, (n, 1, 1, 1))
    palette = np.random.default_rng(12345).uniform(0.1, 0.9, (10, 3, 1, 1))    # a loose colour per class
    fg = np.clip(palette[y] + rng.normal(0, 0.1, (n, 3, 1, 1)), 0, 1).astype(np.float32)
    fg = np.where(np.abs(fg - sky).mean(1, keepdims=True) < 0.2, 1 - fg, fg)   # keep contrast
    shade = 0.75 + 0.25 * (1 - (yy - cy[:, None, None]) / (2 * r[:, None, None]))[:, None]  # lit from above
    img = np.where(mask[:, None], fg * shade, img)
    img = img + rng.normal(0, 0.03, img.shape)
    x = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return torch.from_numpy(x), torch.from_numpy(y).long()


# ------------------------------------------------------------- file formats
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, = struct.unpack(">I", data[:4])
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise AdvssError(f"truncated idx file {path}: expected {np.prod(dims)} values, found {arr.size}")
    return arr.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise AdvssError(f"Fashion-MNIST file {stem}[.gz] not found in {root} "
                     "(on Debian: apt-get install dataset-fashion-mnist)")


def load_fashion_mnist(root):
    """Fashion-MNIST from its idx files, as 3×32×32 (zero-padded, grey replicated)
    so the CIFAR models apply unchanged."""
    root = Path(root)
    if not root.is_dir():
        raise AdvssError(f"Fashion-MNIST directory not found: {root}")
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
        y = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
        x = torch.from_numpy(np.pad(x, ((0, 0), (2, 2), (2, 2)))).unsqueeze(1).repeat(1, 3, 1, 1)
        out[split] = (x.contiguous(), torch.from_numpy(y.astype(np.int64)))
    return out


def load_cifar(root, name: str, download: bool):
    """torchvision's CIFAR under root; with download, fetched there first. Any failure to
    find or fetch it (no network: urllib's URLError, a timeout, a refused connection, a
    corrupt or partial archive) becomes one AdvssError that says what to copy where."""
    import tarfile

    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}[name]
    out = {}
    for split in ("train", "test"):
        try:
            ds = cls(str(root), train=split == "train", download=download)
        except (OSError, RuntimeError, tarfile.TarError) as e:
            what = (f"data.download is true, but fetching {name} from {cls.url} into {root} failed "
                    f"({type(e).__name__}: {e}); this machine may have no network" if download else
                    f"{name} not found under {root} ({e})")
            raise AdvssError(f"{what}. Copy the extracted dataset there, so that {Path(root) / cls.base_folder}/ "
                             f"holds its batch files (the archive {cls.url} unpacked), or run prepare_data once with "
                             f"data.download: true on a machine with internet") from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        out[split] = (x, torch.tensor(ds.targets, dtype=torch.long))
    return out


def prepare(cfg: dict, out_path):
    """Build the dataset file a run trains on: uint8 tensors, labels, seeded 9:1 split."""
    name = cfg["name"]
    if name == "procedural":
        p = cfg.get("procedural", {})
        n, seed, size = p.get("n_per_class", 200), p.get("seed", 0), p.get("size", 32)
        splits = {"train": make_procedural(n, seed, size),
                  "test": make_procedural(p.get("n_test_per_class", max(1, n // 4)), seed + 1, size)}
    elif name in ("cifar10", "cifar100"):
        splits = load_cifar(cfg["root"], name, cfg.get("download", False))
    elif name == "fashion-mnist":
        splits = load_fashion_mnist(cfg["root"])
    elif name == "imagefolder":  # R-ImageNet and other ImageNet-style folders (advss/imagefolder.py)
        from advss.imagefolder import load_imagefolder

        splits = load_imagefolder(cfg["root"], cfg.get("imagefolder", {}))
    else:
        raise AdvssError(f"unknown dataset {name!r}; choose from {DATASETS}")
    train_x, train_y = splits["train"]
    test_x, test_y = splits["test"]
    if cfg.get("n_train"):
        train_x, train_y = train_x[: cfg["n_train"]], train_y[: cfg["n_train"]]
    if cfg.get("n_test"):
        test_x, test_y = test_x[: cfg["n_test"]], test_y[: cfg["n_test"]]
    g = torch.Generator().manual_seed(cfg.get("split_seed", 0))
    perm = torch.randperm(len(train_x), generator=g)
    n_val = int(round(len(train_x) * cfg.get("val_fraction", 0.1)))
    torch_save(out_path, {
        "name": name,
        "train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
        "val_idx": perm[:n_val].sort().values, "fit_idx": perm[n_val:].sort().values,
        # the class map's label count where there is one: a class absent from a capped subset
        # must still get its output
        "num_classes": int(splits.get("num_classes") or max(train_y.max(), test_y.max()) + 1),
    })


def load(path, device) -> dict:
    """Splits as uint8 tensors on `device`: fit (train minus val), val, test."""
    d = torch_load(path, "dataset file")
    need = {"train_x", "train_y", "test_x", "test_y", "val_idx", "fit_idx", "num_classes"}
    if not need <= set(d):
        raise AdvssError(f"dataset file {path} lacks {sorted(need - set(d))}; rebuild it with `advss prepare`")
    tx, ty = d["train_x"].to(device), d["train_y"].to(device)
    fi, vi = d["fit_idx"].to(device), d["val_idx"].to(device)
    return {"fit": (tx[fi], ty[fi]), "val": (tx[vi], ty[vi]),
            "test": (d["test_x"].to(device), d["test_y"].to(device)), "num_classes": d["num_classes"]}


# ------------------------------------------------------------------- loading
def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float().div_(255)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip on a whole batch, by index
    arithmetic (no per-image Python)."""
    n, c, h, w = x.shape
    dev = x.device
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(dev)
    flip = torch.rand(n, generator=gen, device=gen.device).to(dev) < 0.5
    rows = oy[:, None] + torch.arange(h, device=dev)                    # n×h
    cols = torch.arange(w, device=dev).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]  # flip = read columns backwards
    return xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
              rows[:, None, :, None], cols[:, None, None, :]]


def batches(x, y, batch_size: int, gen: torch.Generator | None = None, train: bool = False):
    """Yield float [0,1] batches; shuffled and augmented when `train`."""
    n = len(x)
    order = torch.randperm(n, generator=gen, device=gen.device).to(x.device) if train else torch.arange(n, device=x.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        xb = to_float(x[idx])
        yield (augment(xb, gen) if train else xb), y[idx]
