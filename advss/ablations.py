"""Ablations' pretraining pools (Table 7: adversarial pretraining on unlabeled pools of
several sizes). Their tables, with Table 8 (random-smoothing pretraining) and the
one-shot baseline table, are in advss.report.ablations.

`python -m advss pool` writes a pool file with the keys of a dataset file, so the one
training loop pretrains on it unchanged: the pool's images are the `fit` split (labels
are dummies, the pretext tasks make their own), the run's validation images are its
`val` split (pretext validation stays comparable across pool sizes). Pools of one source
and seed are nested: a smaller pool is a prefix of a larger one's seeded order.

The paper's 30K/50K/150K pools came from 80 Million Tiny Images, which its authors have
withdrawn; a pool here is a seeded subset of the run's training split (`source: train`),
or of a user-supplied unlabeled set (`npy`: an N×H×W×3 uint8 array; `folder`: images,
resized with Pillow), and every Table 7 caption says which.
"""
from __future__ import annotations

from pathlib import Path

POOL_SOURCES = ("train", "npy", "folder")


# ------------------------------------------------------------------ pools
def _source_images(cfg: dict, d: dict, h: int):
    """(an indexable N×3×h×h uint8 collection, N, a loader of chosen indices)."""
    import numpy as np
    import torch

    from advss.io import AdvssError

    source, path = cfg.get("source", "train"), cfg.get("path")
    if source == "train":
        x = d["train_x"][d["fit_idx"]]
        return len(x), lambda idx: x[idx]
    if not path or not Path(path).exists():
        raise AdvssError(f"ablations.pool.path {path!r} not found (needed by source {source!r})")
    if source == "npy":
        arr = np.load(path, mmap_mode="r")  # memory-mapped: only the chosen images are read
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3 or arr.shape[1:3] != (h, h):
            raise AdvssError(f"{path}: expected an N×{h}×{h}×3 uint8 array, found {arr.shape} {arr.dtype}")
        return len(arr), lambda idx: torch.from_numpy(np.ascontiguousarray(arr[idx.numpy()])).permute(0, 3, 1, 2)
    if source == "folder":
        from advss.imagefolder import list_images, load_images

        files = list_images(path)
        return len(files), lambda idx: load_images([files[i] for i in idx.tolist()], h)
    raise AdvssError(f"unknown pool source {source!r}; choose from {POOL_SOURCES}")


def build_pool(cfg: dict, size: int, data_path, out_path):
    """Write a pool file of `size` unlabeled images (see the module docstring)."""
    import torch

    from advss.io import AdvssError, torch_load, torch_save

    d = torch_load(data_path, "dataset file")
    h = d["train_x"].shape[-1]
    n, take = _source_images(cfg, d, h)
    if size > n:
        raise AdvssError(f"pool size {size} is larger than the {n} images of source {cfg.get('source', 'train')!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(cfg.get("seed", 0))))
    pool = take(order[:size].sort().values)
    val_x = d["train_x"][d["val_idx"]]
    torch_save(out_path, {
        "name": f"pool-{cfg.get('source', 'train')}-n{size}",
        "train_x": torch.cat([pool, val_x]), "train_y": torch.zeros(size + len(val_x), dtype=torch.long),
        "test_x": d["test_x"], "test_y": d["test_y"],
        "fit_idx": torch.arange(size), "val_idx": torch.arange(size, size + len(val_x)),
        "num_classes": d["num_classes"], "pool": {"source": cfg.get("source", "train"), "size": size,
                                                  "path": cfg.get("path"), "seed": int(cfg.get("seed", 0))},
    })
