"""R-ImageNet: the shipped class map, and a tiny ImageNet-style folder on disk through
the real loader, one pretraining and one fine-tuning epoch at 224 px (ImageNet stem)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ROOT, train_spec

CLASS_MAP = ROOT / "config/rimagenet_classes.tsv"
RESTRICTED9 = ROOT / "config/restricted_imagenet9_classes.tsv"
# Tsipras et al. 2019 / robustness library RestrictedImageNet ranges (inclusive).
RANGES = [(151, 268), (281, 285), (30, 32), (33, 37), (80, 100), (365, 382), (389, 397), (118, 121), (300, 319)]


def _rows(path):
    return [r.split("\t") for r in path.read_text().splitlines() if r and not r.startswith("#")][1:]


def test_class_map_is_190_imagenet_classes_on_10_labels():
    from advss.classmap import read_class_map

    m = read_class_map(CLASS_MAP)
    rows = _rows(CLASS_MAP)
    assert len(m) == len(rows) == 190                       # 190 distinct wnids, none listed twice
    assert len({int(r[1]) for r in rows}) == 190 and all(0 <= int(r[1]) < 1000 for r in rows)
    labels = [label for label, *_ in m.values()]
    assert sorted(set(labels)) == list(range(10)) and all(labels.count(k) == 19 for k in range(10))
    assert len({name for _, name, _ in m.values()}) == 10     # one super-class name per label
    assert m["n02085620"][1] == "dog"                       # Chihuahua (class 151) is a dog


def test_class_map_indices_are_imagenet_sorted_wnid_order():
    """Both shipped maps state wnid and index; index is the wnid's rank among ImageNet's
    1000 sorted wnids, so the order of wnids and of indices must agree across the maps."""
    rows = {r[0]: int(r[1]) for path in (CLASS_MAP, RESTRICTED9) for r in _rows(path)}
    by_wnid = sorted(rows)
    assert [rows[w] for w in by_wnid] == sorted(rows.values())
    assert rows["n01530575"] == 10 and rows["n02085620"] == 151  # brambling, Chihuahua


def test_restricted_imagenet9_is_the_published_ranges():
    from advss.classmap import read_class_map

    rows = _rows(RESTRICTED9)
    want = {i: label for label, (a, b) in enumerate(RANGES) for i in range(a, b + 1)}
    assert {int(r[1]): int(r[2]) for r in rows} == want and len(read_class_map(RESTRICTED9)) == 203


@pytest.mark.parametrize("body, match", [
    ("n00000001\t1\t0\ta\nn00000001\t2\t1\tb\n", "listed twice"),
    ("n00000001\t1\t0\ta\nn00000002\t1\t1\tb\n", "listed twice"),
    ("n00000001\t1\t0\ta\nn00000002\t2\t2\tb\n", "labels must be 0..K-1"),
    ("dog\t1\t0\ta\n", "not an ImageNet wnid"),
    ("n00000001\t1000\t0\ta\n", "outside 0..999"),
    ("n00000001\tone\t0\ta\n", "line 2 is not"),
    ("n00000001\t1\t0\ta\nn00000002\t2\t0\tb\n", "named both 'a' and 'b'"),
])
def test_class_map_refuses_bad_rows(tmp_path, body, match):
    from advss.classmap import read_class_map

    bad = tmp_path / "bad.tsv"
    bad.write_text("wnid\tindex\tlabel\tsuperclass\n" + body)
    with pytest.raises(ValueError, match=match):
        read_class_map(bad)


def test_balanced_superclass_rule():
    """advss.classmap's rule on a toy hierarchy: nested candidates are skipped, shared
    classes dropped, each super-class cut to its first classes by index."""
    from advss.classmap import balanced_superclasses, classes_below

    parents = {"a1": {"A"}, "a2": {"A"}, "a3": {"A"}, "b1": {"B"}, "b2": {"B"}, "s": {"A", "B"},
               "b3": {"B"}, "c1": {"C"}, "A": {"R"}, "B": {"R"}, "C": {"R"}}
    classes = ["a1", "a2", "a3", "b1", "b2", "b3", "c1", "s"]
    index = {w: i for i, w in enumerate(sorted(classes))}
    below = classes_below(classes, parents)
    assert below["R"] == set(classes) and below["A"] == {"a1", "a2", "a3", "s"}
    with pytest.raises(ValueError, match="only 1 disjoint"):  # everything lies inside R
        balanced_superclasses(["R", "A", "B", "C"], below, index, n=2, per_class=2)
    got = balanced_superclasses(["A", "R", "B", "C"], below, index, n=2, per_class=2)
    assert got == [("A", ["a1", "a2"]), ("B", ["b1", "b2"])]   # "s" is under both: dropped
    with pytest.raises(ValueError, match="fewer than 2"):
        balanced_superclasses(["A", "C"], below, index, n=2, per_class=2)


def _tiny_imagenet(root):
    """The class map's 190 wnid folders (empty but for three classes holding a few small
    images) and one class outside the map (tench, class 0)."""
    from PIL import Image

    rows = _rows(CLASS_MAP)
    first_of = {label: next(r[0] for r in rows if int(r[2]) == label) for label in (0, 1, 2)}
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for r in rows:
            (root / split / r[0]).mkdir(parents=True)
    for wnid, n_train in ((first_of[0], 3), (first_of[1], 2), (first_of[2], 2), ("n01440764", 2)):
        for split, n in (("train", n_train), ("val", 1)):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for j in range(n):
                img = rng.integers(0, 256, (30 + j, 40, 3), dtype=np.uint8)  # not square, not 224
                Image.fromarray(img).save(root / split / wnid / f"{j}.JPEG")


def test_rimagenet_folder_to_pretraining_and_finetuning(tmp_path):
    import torch

    from advss import data as D
    from advss.data import prepare
    from advss.train import train

    _tiny_imagenet(tmp_path / "imagenet")
    cfg = {"name": "imagefolder", "root": str(tmp_path / "imagenet"), "val_fraction": 0.15, "split_seed": 0,
           "imagefolder": {"class_map": str(CLASS_MAP), "size": 224}}
    prepare(cfg, tmp_path / "dataset.pt")
    d = torch.load(tmp_path / "dataset.pt", weights_only=True)
    assert d["train_x"].shape == (7, 3, 224, 224) and d["train_x"].dtype == torch.uint8
    assert sorted(d["train_y"].tolist()) == [0, 0, 0, 1, 1, 2, 2] and sorted(d["test_y"].tolist()) == [0, 1, 2]
    assert d["num_classes"] == 10  # the map's ten labels, though only three have images here
    assert D.load(tmp_path / "dataset.pt", "cpu")["val"][0].shape[-1] == 224

    model = {"arch": "resnet-tiny", "width": 4, "stem": "imagenet"}
    log = lambda m: None  # noqa: E731
    pre = train_spec(stage="pretrain", task="jigsaw", pretext={"jigsaw": {"grid": 4, "n_perms": 5}}, model=model,
                     objective={"kind": "adversarial", "mix": "clean+adv"}, eval_ra=True, select_by="last",
                     epochs=1, batch_size=4, augment=True)
    pre["threat"]["train_steps"] = pre["threat"]["eval_steps"] = 1
    train(pre, tmp_path / "dataset.pt", tmp_path / "p.pt", tmp_path / "p.csv", tmp_path / "p.json", log=log)
    ft = train_spec(model=model, objective={"kind": "adversarial", "mix": "adv"}, epochs=1, batch_size=4,
                    select_by="val_ra", eval_ra=True)
    ft["threat"]["train_steps"] = ft["threat"]["eval_steps"] = 1
    train(ft, tmp_path / "dataset.pt", tmp_path / "f.pt", tmp_path / "f.csv", tmp_path / "f.json",
          init=tmp_path / "p.pt", log=log)
    meta = __import__("json").loads((tmp_path / "f.json").read_text())
    assert meta["epochs_run"] == 1 and meta["transfer"]["loaded"] > 0


def test_missing_wnid_folders_are_refused(tmp_path):
    from advss.imagefolder import load_imagefolder
    from advss.io import AdvssError

    (tmp_path / "train" / "n02085620").mkdir(parents=True)
    with pytest.raises(AdvssError, match="189 of the class map's 190 wnid folders are missing"):
        load_imagefolder(tmp_path, {"class_map": str(CLASS_MAP)})


def test_whole_imagenet_must_agree_with_the_map_indices(tmp_path):
    from advss.imagefolder import load_imagefolder
    from advss.io import AdvssError

    for i in range(1000):  # 1000 wnid folders whose sorted order is not ImageNet's
        (tmp_path / "train" / f"n{i:08d}").mkdir(parents=True)
    with pytest.raises(AdvssError, match="disagrees with the sorted wnid folders"):
        load_imagefolder(tmp_path, {"class_map": str(CLASS_MAP)})
