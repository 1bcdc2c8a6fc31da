"""How `config/rimagenet_classes.tsv` was made: 10 WordNet super-classes × 19 ImageNet
classes = the paper's "10 super-classes / 190 classes" of R-ImageNet.

No published list of those 190 classes exists that we could find: the Restricted ImageNet
of Tsipras et al. / Santurkar et al. 2019 (the `robustness` library) has 9 super-classes
over 203 classes (shipped as `config/restricted_imagenet9_classes.tsv`). So the map is
rebuilt by a stated rule from the same lab's tools: walk the `robustness` library's
"big_12" super-class list in its order, skip a super-class that contains or lies inside
an earlier one (carnivore contains dog), keep the first 10, drop ImageNet classes that
fall under two of them, and keep the first 19 classes of each by ImageNet index — the
library's `balanced` rule, at the size that gives 190. Run once, offline:

    python -m advss.classmap --wordnet /usr/share/wordnet/data.noun \
        --wnids <file or ImageNet train folder with the 1000 wnids> > config/rimagenet_classes.tsv

(`data.noun` is WordNet 3.0, Debian package `wordnet-base`; ImageNet wnids are
"n" + the synset's offset in it.) Only this script needs WordNet; the pipeline reads the TSV.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

WNID_RE = re.compile(r"n\d{8}")
IMAGENET_CLASSES = 1000  # ILSVRC-2012 classes, indexed by sorted wnid

# The `robustness` library's "big_12" group, in its order (tools/imagenet_helpers.py).
BIG12 = ["n02084071",  # dog
         "n04341686",  # structure
         "n01503061",  # bird
         "n03051540",  # clothing
         "n04576211",  # wheeled vehicle
         "n01661091",  # reptile
         "n02075296",  # carnivore
         "n02159955",  # insect
         "n03800933",  # musical instrument
         "n07555863",  # food
         "n03405725",  # furniture
         "n02469914"]  # primate


class ClassEntry(NamedTuple):
    label: int        # super-class label, 0..K-1
    superclass: str   # its name
    index: int        # ImageNet class index (rank of the wnid among the 1000 sorted)


def wnid_folders(folder) -> list[str]:
    """The sorted wnid-named subfolders of an ImageNet-style split folder."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_dir() and WNID_RE.fullmatch(p.name))


def _tsv_rows(path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every line that is neither blank nor a '#' comment."""
    with open(path, newline="") as f:
        return [(n, r) for n, r in enumerate(csv.reader(f, delimiter="\t"), start=1)
                if r and not r[0].startswith("#")]


def read_class_map(path) -> dict[str, ClassEntry]:
    """wnid -> (super-class label, super-class name, ImageNet index) from a TSV with the header
    wnid, index, label, superclass[, name]; '#' lines are comments. Labels must be 0..K-1."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"class map not found: {path}")
    rows = _tsv_rows(path)
    if not rows or rows[0][1][:4] != ["wnid", "index", "label", "superclass"]:
        raise ValueError(f"{path}: the header must start wnid, index, label, superclass")
    out, seen_index, label_name = {}, set(), {}
    for n, r in rows[1:]:
        try:
            wnid, index, label, name = r[0], int(r[1]), int(r[2]), r[3]
        except (IndexError, ValueError):
            raise ValueError(f"{path}: line {n} is not wnid, index, label, superclass: {r}") from None
        if not WNID_RE.fullmatch(wnid):
            raise ValueError(f"{path}: line {n}: {wnid!r} is not an ImageNet wnid (n + 8 digits)")
        if wnid in out or index in seen_index:
            raise ValueError(f"{path}: line {n}: ImageNet class {wnid} / {index} is listed twice")
        if not 0 <= index < IMAGENET_CLASSES:
            raise ValueError(f"{path}: line {n}: class index {index} is outside 0..{IMAGENET_CLASSES - 1}")
        if label_name.setdefault(label, name) != name:
            raise ValueError(f"{path}: line {n}: label {label} is named both {label_name[label]!r} and {name!r}")
        out[wnid] = ClassEntry(label, name, index)
        seen_index.add(index)
    if not out:
        raise ValueError(f"{path}: no classes")
    if sorted(label_name) != list(range(len(label_name))):
        raise ValueError(f"{path}: labels must be 0..K-1, got {sorted(label_name)}")
    return out


def read_wordnet_nouns(path) -> tuple[dict[str, set[str]], dict[str, str]]:
    """Hypernym (and instance-hypernym) parents and the first lemma of every noun synset
    of a WordNet `data.noun` file."""
    parents: dict[str, set[str]] = defaultdict(set)
    names: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("  "):  # the licence header
                continue
            fields = line.split()
            wnid = "n" + fields[0]
            n_words = int(fields[3], 16)
            names[wnid] = fields[4].replace("_", " ")
            p = 4 + 2 * n_words
            for k in range(int(fields[p])):
                symbol, offset, pos = fields[p + 1 + 4 * k: p + 4 + 4 * k]
                if symbol in ("@", "@i") and pos == "n":
                    parents[wnid].add("n" + offset)
    return parents, names


def classes_below(wnids: list[str], parents: dict[str, set[str]]) -> dict[str, set[str]]:
    """synset -> the given classes at or below it (every hypernym path counts)."""
    below: dict[str, set[str]] = defaultdict(set)
    for w in wnids:
        stack, seen = [w], {w}
        while stack:
            x = stack.pop()
            below[x].add(w)
            for p in parents.get(x, ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
    return below


def balanced_superclasses(candidates: list[str], below: dict[str, set[str]], index: dict[str, int],
                          n: int = 10, per_class: int = 19) -> list[tuple[str, list[str]]]:
    """The rule of the module docstring: [(super-class wnid, its classes by index)]."""
    chosen: list[str] = []
    for c in candidates:
        if len(chosen) == n:
            break
        if any(below[c] <= below[d] or below[d] <= below[c] for d in chosen):
            continue
        chosen.append(c)
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} disjoint super-classes among the candidates, {n} wanted")
    count = defaultdict(int)
    for c in chosen:
        for w in below[c]:
            count[w] += 1
    out = []
    for c in chosen:
        members = sorted((w for w in below[c] if count[w] == 1), key=index.__getitem__)
        if len(members) < per_class:
            raise ValueError(f"super-class {c} has {len(members)} classes, fewer than {per_class}")
        out.append((c, members[:per_class]))
    return out


def read_wnids(path) -> list[str]:
    """The 1000 ImageNet wnids in class-index (sorted) order, from a text file that names
    them (one per line, e.g. LOC_synset_mapping.txt) or an ImageNet train folder."""
    path = Path(path)
    if path.is_dir():
        found = wnid_folders(path)
    else:
        found = [m.group(0) for line in path.read_text().splitlines() if (m := WNID_RE.match(line.strip()))]
    wnids = sorted(set(found))
    if len(wnids) != 1000:
        raise ValueError(f"{path}: {len(wnids)} distinct wnids, ImageNet-1k has 1000")
    return wnids


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", required=True, help="WordNet 3.0 data.noun")
    ap.add_argument("--wnids", required=True, help="file or ImageNet train folder naming the 1000 wnids")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=19)
    a = ap.parse_args(argv)
    wnids = read_wnids(a.wnids)
    index = {w: i for i, w in enumerate(wnids)}
    parents, names = read_wordnet_nouns(a.wordnet)
    missing = [w for w in wnids if w not in names]
    if missing:
        raise SystemExit(f"{len(missing)} wnids are not WordNet 3.0 noun synsets, e.g. {missing[:3]}")
    groups = balanced_superclasses(BIG12, classes_below(wnids, parents), index, a.n, a.per_class)
    w = sys.stdout.write
    w("# R-ImageNet class map: %d super-classes x %d ImageNet classes (ImageNet-1k wnids; index =\n"
      "# position in sorted wnid order). Built by advss/classmap.py from WordNet 3.0; read its\n"
      "# docstring for the rule and why (no published 190-class list was found).\n" % (a.n, a.per_class))
    w("wnid\tindex\tlabel\tsuperclass\tname\n")
    for label, (sup, members) in enumerate(groups):
        for m in members:
            w(f"{m}\t{index[m]}\t{label}\t{names[sup]}\t{names[m]}\n")


if __name__ == "__main__":
    main()
