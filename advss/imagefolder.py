"""Image folders as uint8 tensors: R-ImageNet (ImageNet restricted to the super-classes
of a class map: `config/rimagenet_classes.tsv`, 10 super-classes over 190 classes, see
advss/classmap.py) and unlabeled pools of images for the Table 7 ablation.

ImageNet layout: `<root>/<train_dir>/<wnid>/*.JPEG` and `<root>/<test_dir>/<wnid>/*.JPEG`
(the validation set sorted into wnid folders, as the usual `valprep.sh` does). The class
map names each class by wnid, so only the mapped classes' folders need to be there.
Nothing is downloaded.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from advss.classmap import IMAGENET_CLASSES, read_class_map, wnid_folders
from advss.io import AdvssError

IMAGE_EXTS = (".jpeg", ".jpg", ".png", ".bmp", ".ppm", ".webp")


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


def _split(root: Path, sub: str, class_map, per_class, size, seed):
    folder = root / sub
    missing = [w for w in class_map if not (folder / w).is_dir()]
    if missing:
        raise AdvssError(f"{folder}: {len(missing)} of the class map's {len(class_map)} wnid folders are "
                         f"missing, e.g. {', '.join(missing[:3])}")
    paths, labels = [], []
    g = np.random.default_rng(seed)
    for wnid, entry in sorted(class_map.items()):
        files = list_images(folder / wnid)
        if per_class and len(files) > per_class:  # a seeded subset, the same on every run
            files = [files[i] for i in sorted(g.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [entry.label] * len(files)
    if not paths:
        raise AdvssError(f"no images of the class map's classes under {folder}")
    return load_images(paths, size), torch.tensor(labels, dtype=torch.long)


def load_imagefolder(root, cfg: dict) -> dict:
    """{'train': (x, y), 'test': (x, y), 'num_classes'} of the classes in cfg['class_map'], relabelled."""
    root = Path(root)
    train_dir = root / cfg.get("train_dir", "train")
    if not train_dir.is_dir():
        raise AdvssError(f"image folder not found: {train_dir}")
    try:
        class_map = read_class_map(cfg["class_map"])
    except ValueError as e:
        raise AdvssError(str(e)) from None
    wnids = wnid_folders(train_dir)
    if len(wnids) == IMAGENET_CLASSES:  # a whole ImageNet: the map's indices must agree with it
        wrong = [w for w, e in class_map.items() if wnids[e.index] != w]
        if wrong:
            raise AdvssError(f"{cfg['class_map']}: the index of {len(wrong)} wnids disagrees with the "
                             f"sorted wnid folders of {train_dir}, e.g. {wrong[0]}")
    size, seed = int(cfg.get("size", 224)), int(cfg.get("seed", 0))
    return {"train": _split(root, cfg.get("train_dir", "train"), class_map, cfg.get("max_per_class"), size, seed),
            "test": _split(root, cfg.get("test_dir", "val"), class_map, cfg.get("max_test_per_class"), size, seed),
            "num_classes": len({e.label for e in class_map.values()})}
