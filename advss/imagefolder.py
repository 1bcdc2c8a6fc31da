"""Image folders as uint8 tensors: R-ImageNet (ImageNet restricted to the super-classes
of Tsipras et al. 2019 / Santurkar et al. 2019 through a class map) and unlabeled pools
of images for the Table 7 ablation.

ImageNet layout: `<root>/<train_dir>/<wnid>/*.JPEG` and `<root>/<test_dir>/<wnid>/*.JPEG`
(the validation set sorted into wnid folders, as the usual `valprep.sh` does). The class
map lists ImageNet class *indices*; index i is the i-th wnid in sorted order — the
standard definition of ImageNet's class indices — so the train folder must hold all
1000 wnid folders. (The wnid list itself could not be shipped offline; the sorted order
gives the same mapping on any complete ImageNet.) Nothing is downloaded.
"""
from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from advss.io import AdvssError

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")
IMAGENET_CLASSES = 1000  # ILSVRC-2012 classes, indexed by sorted wnid


def read_class_map(path) -> dict[int, tuple[int, str]]:
    """ImageNet class index -> (super-class label, super-class name) from a TSV with
    columns first_index, last_index (inclusive), label, name; '#' lines are comments."""
    path = Path(path)
    if not path.exists():
        raise AdvssError(f"class map not found: {path}")
    out = {}
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    for r in rows[1:]:  # the first row is the header
        first, last, label, name = int(r[0]), int(r[1]), int(r[2]), r[3]
        for i in range(first, last + 1):
            if i in out:
                raise AdvssError(f"{path}: ImageNet class {i} is listed twice")
            if not 0 <= i < IMAGENET_CLASSES:
                raise AdvssError(f"{path}: class index {i} is outside 0..{IMAGENET_CLASSES - 1}")
            out[i] = (label, name)
    return out


def load_image(path, size: int) -> np.ndarray:
    """Resize the shorter side to `size` (bilinear) and centre-crop to size×size; H×W×3 uint8."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_images(paths, size: int, workers: int = 8) -> torch.Tensor:
    """N×3×size×size uint8; Pillow decodes outside the GIL, so threads overlap the files."""
    if not paths:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(workers) as ex:
        arrays = list(ex.map(lambda p: load_image(p, size), paths))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def list_images(folder) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTS)


def _split(root: Path, sub: str, wnids: list[str], class_map, per_class, size, seed):
    paths, labels = [], []
    g = np.random.default_rng(seed)
    for idx, (label, _) in sorted(class_map.items()):
        files = list_images(root / sub / wnids[idx])
        if per_class and len(files) > per_class:  # a seeded subset, the same on every run
            files = [files[i] for i in sorted(g.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise AdvssError(f"no images of the class map's classes under {root / sub}")
    return load_images(paths, size), torch.tensor(labels, dtype=torch.long)


def load_imagefolder(root, cfg: dict) -> dict:
    """{'train': (x, y), 'test': (x, y)} of the classes in cfg['class_map'], relabelled."""
    root = Path(root)
    train_dir = root / cfg.get("train_dir", "train")
    if not train_dir.is_dir():
        raise AdvssError(f"image folder not found: {train_dir}")
    wnids = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(wnids) != IMAGENET_CLASSES:
        raise AdvssError(f"{train_dir} has {len(wnids)} class folders; the class map indexes ImageNet's "
                         f"{IMAGENET_CLASSES} classes by sorted wnid, so all of them must be there")
    class_map = read_class_map(cfg["class_map"])
    size, seed = int(cfg.get("size", 224)), int(cfg.get("seed", 0))
    return {"train": _split(root, cfg.get("train_dir", "train"), wnids, class_map, cfg.get("max_per_class"), size, seed),
            "test": _split(root, cfg.get("test_dir", "val"), wnids, class_map, cfg.get("max_test_per_class"), size, seed)}
