"""DynACL++'s post-processing (Luo et al. ICLR 2023), its first half: pseudo-labels by
clustering the pretrained model's features, and what the training loop needs to train on
them (`relabel`) and to carry both BN copies through (`carried_bn_copies`).

As PKU-ML/DYNACL @7d143db7f63e699a533df8e262bcf6ed02abe805 `assign_label.py` does: the
features are the trunk's (after global pooling, before the projection head) through the
clean BN copy ('normal'), in eval mode, of every training image without augmentation
(ToTensor only), clustered into 10 groups by k-means on Euclidean distance. Its second
half, linear probing then adversarial fine-tuning on these labels (`LPAFT.py`,
`LPAFT_AFF.py`), is two ordinary jobs of the one training loop (workflow/rules/dynaclpp.smk).

k-means here is a short torch implementation on the job's device, not scikit-learn's:
50k×512 features and 10 centres take seconds on a GPU in torch, scikit-learn would be a new
dependency of the whole package for one call, and its result would depend on its BLAS's
threading. Where assign_label.py's `kmeans_pytorch` seeds one run from random points,
this one seeds with k-means++ and keeps the best of several restarts (lowest inertia),
so the labels depend less on the draw (a stated difference).
"""
from __future__ import annotations

import torch

from advss import data as D
from advss.io import AdvssError, generator, pick_device, provenance, torch_load, torch_save, write_json
from advss.models import build_trunk, load_checkpoint

ROUTES = ("clean", "adv")


# ------------------------------------------------------------------ k-means
def _sq_dist(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (n, k), clamped at 0 (the expansion can round below)."""
    return (x.pow(2).sum(1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(1)).clamp_min_(0)


def kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): the first centre uniformly, each next
    one with probability ∝ the squared distance to the nearest centre chosen so far."""
    n = len(x)
    centres = [x[torch.randint(n, (1,), generator=gen, device=gen.device).to(x.device)]]
    d2 = _sq_dist(x, centres[0])[:, 0]
    for _ in range(1, k):
        p = d2 if d2.sum() > 0 else torch.ones_like(d2)  # all points on the centres: any point
        i = torch.multinomial(p.to(gen.device), 1, generator=gen).to(x.device)
        centres.append(x[i])
        d2 = torch.minimum(d2, _sq_dist(x, centres[-1])[:, 0])
    return torch.cat(centres)


def lloyd(x: torch.Tensor, centres: torch.Tensor, iters: int, tol: float):
    """Lloyd's iterations from `centres` until no centre moves more than `tol` (squared
    shift summed, kmeans_pytorch's criterion) or `iters` are done. An emptied cluster keeps
    its centre. Returns (labels, centres, inertia)."""
    k = len(centres)
    for _ in range(iters):
        labels = _sq_dist(x, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        shift = (new - centres).pow(2).sum()
        centres = new
        if shift <= tol:
            break
    d2 = _sq_dist(x, centres)
    labels = d2.argmin(1)
    return labels, centres, float(d2.gather(1, labels[:, None]).sum())


def kmeans(x: torch.Tensor, k: int, seed: int = 0, restarts: int = 10, iters: int = 300, tol: float = 1e-4):
    """The best of `restarts` k-means runs (k-means++ seeding, then Lloyd) by inertia, the sum
    of squared distances to the nearest centre. Returns (labels (n,), centres (k, d), inertia)."""
    if x.dim() != 2 or not len(x):
        raise ValueError(f"k-means needs an (n, d) matrix of n ≥ 1 points, not shape {tuple(x.shape)}")
    if not 1 <= k <= len(x) or restarts < 1 or iters < 1:
        raise ValueError(f"k-means: need 1 ≤ k ≤ n ({k}, {len(x)}), restarts ≥ 1 ({restarts}), iters ≥ 1 ({iters})")
    x = x.float()
    best = None
    for r in range(restarts):
        gen = generator(seed * 1000 + r, x.device)
        run = lloyd(x, kmeans_pp(x, k, gen), iters, tol)
        if best is None or run[2] < best[2]:
            best = run
    return best


# ------------------------------------------------------------------ features
def route_state(ck: dict, route: str) -> dict:
    """A pretraining checkpoint's weights with the BN copy `route` ('clean', assign_label.py's
    'normal'; 'adv'): its one-copy weights with that copy's BN tensors over them
    (`bn_copies`, kept by a dual-BN pretraining). A single-BN checkpoint has one copy: its own."""
    if route not in ROUTES:
        raise ValueError(f"pseudo-label feature route must be one of {ROUTES}, not {route!r}")
    copies = ck.get("bn_copies")
    return {**ck["state_dict"], **(copies[route] if copies else {})}


@torch.no_grad()
def features(ck: dict, model_cfg: dict, x_uint8: torch.Tensor, route: str = "clean", batch: int = 1000):
    """The trunk's pooled features of images x (uint8, no augmentation) in eval mode, through
    the BN copy `route`, as assign_label.py's `model.eval()(x, 'normal', return_features=True)`."""
    from advss.models import Normalize

    trunk = build_trunk(model_cfg)
    state = route_state(ck, route)
    trunk_state = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    trunk.load_state_dict(trunk_state)  # strict: every trunk tensor from the pretraining
    trunk = trunk.to(x_uint8.device).eval()
    norm = Normalize().to(x_uint8.device)
    return torch.cat([trunk(norm(D.to_float(x_uint8[i:i + batch]))) for i in range(0, len(x_uint8), batch)])


def all_training(data: dict):
    """Every training image and label in the order of a `train_data: all` job (fit, then val)."""
    (fx, fy), (vx, vy) = data["fit"], data["val"]
    return torch.cat([fx, vx]), torch.cat([fy, vy])


def purity(labels: torch.Tensor, truth: torch.Tensor) -> float:
    """The share of images whose cluster's most frequent true class is their own (a check of
    the clustering against labels it never saw; 1 = every cluster one class)."""
    k, c = int(labels.max()) + 1, int(truth.max()) + 1
    table = torch.zeros(k, c, dtype=torch.long, device=labels.device)
    table.index_put_((labels, truth), torch.ones_like(labels), accumulate=True)
    return float(table.max(1).values.sum()) / len(labels)


def run(spec: dict, data_path, model_path, out, out_json, device="auto") -> dict:
    """The clustering job: features of every training image from the pretrained model at
    `model_path`, k-means on them, the labels (fit then val order) in `out`, a summary in `out_json`."""
    import time

    started = time.time()
    k, route = int(spec.get("clusters", 10)), spec.get("route", "clean")
    if k < 2:
        raise AdvssError(f"pseudo-labels: clusters must be ≥ 2, not {k}")
    if route not in ROUTES:
        raise AdvssError(f"pseudo-labels: route must be one of {ROUTES}, not {route!r}")
    dev = pick_device(device)
    ck = load_checkpoint(model_path, spec["model"])
    data = D.load(data_path, dev)
    x, y = all_training(data)
    feats = features(ck, spec["model"], x, route)
    labels, _, inertia = kmeans(feats, k, int(spec.get("seed", 0)), int(spec.get("restarts", 10)),
                                int(spec.get("iters", 300)), float(spec.get("tol", 1e-4)))
    labels = labels.cpu()
    torch_save(out, {"labels": labels, "clusters": k, "n_fit": len(data["fit"][0]), "n_val": len(data["val"][0])})
    summary = {"clusters": k, "route": route, "inertia": inertia, "n": len(labels),
               "sizes": torch.bincount(labels, minlength=k).tolist(), "purity": purity(labels, y.cpu())}
    write_json(out_json, provenance(spec, dev, started, stage="pseudolabel", **summary))
    return summary


# ------------------------------------------------------------------ the loop's side
def relabel(data: dict, labels_path) -> dict:
    """The dataset with its training labels (fit and val) replaced by the pseudo-labels of
    `labels_path` (the clustering job's, fit then val order), and as many classes as clusters;
    the test set keeps its true labels (no job on pseudo-labels reports test numbers)."""
    lab = torch_load(labels_path, "pseudo-label file")
    (fx, _), (vx, _) = data["fit"], data["val"]
    if not isinstance(lab, dict) or {"labels", "clusters", "n_fit", "n_val"} - set(lab):
        raise AdvssError(f"{labels_path} is not a pseudo-label file of `advss pseudolabel`")
    if (lab["n_fit"], lab["n_val"]) != (len(fx), len(vx)):
        raise AdvssError(f"{labels_path} labels {lab['n_fit']} + {lab['n_val']} images, but the dataset's split "
                         f"has {len(fx)} + {len(vx)}")
    y = lab["labels"].to(fx.device)
    return {**data, "fit": (fx, y[:len(fx)]), "val": (vx, y[len(fx):]), "num_classes": int(lab["clusters"])}


def carried_bn_copies(ck: dict, state: dict) -> dict:
    """Both BN copies after a one-copy job on a dual-BN checkpoint `ck` (DynACL++'s LP and AFT,
    which train through the adversarial copy alone): the copy the job trained (the one its plain
    weights were) from the job's final `state`, the other as `ck` kept it. LPAFT_AFF.py routes
    both of its pseudo-label stage's inputs through the 'pgd' copy, so the clean one stays as
    pretrained, and a later dual-BN AFF starts from both (RSB's `state_dict_plus`)."""
    copies = ck.get("bn_copies")
    if not copies:
        raise AdvssError("keep_bn_copies: the checkpoint keeps one BN copy (no bn_copies); it needs a dual-BN "
                         "pretraining (ACL, DynACL)")
    plain = ck["state_dict"]
    trained = next((c for c in ("adv", "clean") if all(torch.equal(v, plain[k]) for k, v in copies[c].items())), None)
    if trained is None:
        raise AdvssError("keep_bn_copies: the checkpoint's plain weights are neither of its BN copies")
    other = "clean" if trained == "adv" else "adv"
    keys = [k for k in copies[trained] if k in state]  # the trunk's (a classifier has no projection head)
    return {trained: {k: state[k].detach().cpu() for k in keys}, other: {k: copies[other][k] for k in keys}}
