"""Transfer attacks between fine-tuned models (Table 4, Figure 5).

`python -m advss transfer`: PGD (the threat's eval steps) crafted on one source model
over the test set, then evaluated on every target model; per-example success vectors
are saved. Success on a target = the target misclassifies the adversarial image, and
ASR = successes / all test images, so the source's own column is 1 − its RA: the
examples are drawn exactly as `advss.evaluate` draws them (same per-batch generators).
"""
from __future__ import annotations

import time

import numpy as np


def add_arguments(p):
    from advss.cli import common_args

    common_args(p)
    p.add_argument("--source", required=True, help="checkpoint the attack is crafted on")
    p.add_argument("--targets", nargs="+", required=True, help="checkpoints evaluated, in the order of spec['targets']")
    p.add_argument("--out-npz", required=True)
    p.add_argument("--out-json", required=True)


def main(args):
    import json

    from advss.io import AdvssError

    if len(args.targets) != len(args.spec.get("targets", [])):
        raise AdvssError(f"--targets gives {len(args.targets)} checkpoints but spec['targets'] names "
                         f"{len(args.spec.get('targets', []))}")
    print(json.dumps(run(args.spec, args.data, args.source, args.targets, args.out_npz, args.out_json, args.device)))


def prepare_model(model, spec, dev):
    """The device placement of `advss.evaluate.run`: channels-last and compile as the
    fast settings say, but always fp32 (reported numbers must not depend on the
    precision chosen for training speed: a low-precision attack can be weaker)."""
    from advss.train import apply_fast, fast_settings

    return apply_fast(model, dev, fast_settings(spec, dev))


def craft(model, task, x, y, threat, batch_size, seed=0, bf16=False):
    """PGD examples on `model` (eval mode), batch by batch with the generators that
    `advss.train.evaluate` uses, so they are the very examples its RA is measured on."""
    import torch

    from advss import data as D
    from advss.attacks import pgd
    from advss.io import batch_seed, generator
    from advss.train import autocast

    model.eval()
    out = []
    with autocast(x.device, bf16):
        for b, i in enumerate(range(0, len(x), batch_size)):
            gen = generator(batch_seed(seed, -1, b), x.device)
            inputs, targets = task.make_batch(D.to_float(x[i:i + batch_size]), y[i:i + batch_size], gen)
            out.append(pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen))
    return torch.cat(out)


def run(spec, data_path, source_path, target_paths, out_npz, out_json, device="auto"):
    from advss import data as D
    from advss.attacks import Threat
    from advss.evaluate import load_classifier, test_split
    from advss.io import pick_device, provenance, save_npz, set_deterministic, write_json
    from advss.train import evaluate

    started = time.time()
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    data = D.load(data_path, dev)
    x, y = test_split(data, spec.get("n_examples"))
    threat = Threat.from_cfg(spec["threat"], "eval_steps")
    bs, seed = int(spec.get("batch_size", 256)), int(spec.get("seed", 0))
    source, task = load_classifier(source_path, spec["model"], data["num_classes"], dev)
    source = prepare_model(source, spec, dev)
    x_adv = craft(source, task, x, y, threat, bs, seed)
    success, preds = [], []
    for path in target_paths:
        target, _ = load_classifier(path, spec["model"], data["num_classes"], dev)
        target = prepare_model(target, spec, dev)
        ev = evaluate(target, task, x_adv, y, None, bs, seed)
        success.append(~ev["clean"].numpy().astype(bool))
        preds.append(ev["pred_clean"].numpy())
    success = np.stack(success)
    save_npz(out_npz, y=y.cpu().numpy(), source=np.array(spec["source"]), targets=np.array(spec["targets"]),
             success=success, pred=np.stack(preds))
    res = {"source": spec["source"], "n": int(len(y)), "attack": f"pgd{threat.steps}-{threat.norm}", "eval_precision": "fp32",
           "asr": {t: float(s.mean()) for t, s in zip(spec["targets"], success)}}
    write_json(out_json, {**res, "provenance": provenance(spec, dev, started, source=str(source_path),
                                                          targets=[str(p) for p in target_paths])})
    return res


# ------------------------------------------------------------------ results
def transfer_npz(run_dir, src, ft, seed):
    from pathlib import Path

    from advss.io import load_npz

    return load_npz(Path(run_dir) / "transfer" / src / ft / f"seed{seed}.npz")


def scenario(spec):
    """The (P, F) scenario whose per-task models are attacked (the paper: (P3,F4))."""
    return tuple(spec.get("transfer_scenario", ("P3", "F4")))


def success_sets(spec, seed):
    """{source task: {target task: bool vector}} for the scenario's models of one seed."""
    from advss import protocol as P

    p, f = scenario(spec)
    out = {}
    for s in spec["tasks"]:
        z = transfer_npz(spec["run_dir"], P.source_id(s, p), P.finetune_id(f), seed)
        names = [str(t) for t in z["targets"]]
        out[s] = {t: z["success"][names.index(P.source_id(t, p))] for t in spec["tasks"]}
    return out


# ------------------------------------------------------------------ Table 4
def table4(spec: dict, prefix):
    """ASR (%) of PGD crafted on Model(source) against Model(target), rows = target."""
    import pandas as pd

    from advss import protocol as P
    from advss.report import aggregate, fmt, seeds_phrase, write_table

    rows = []
    for seed in spec["seeds"]:
        sets = success_sets(spec, seed)
        rows += [{"target": t, "source": s, "seed": seed, "asr": 100 * float(np.mean(v))}
                 for s, by_target in sets.items() for t, v in by_target.items()]
    agg = aggregate(pd.DataFrame(rows), ["target", "source"], ["asr"])
    agg["paper_asr"] = [P.PAPER_TABLE4.get(t, {}).get(s) for t, s in zip(agg["target"], agg["source"])]
    cell = {(t, s): fmt(m, sd) for t, s, m, sd in zip(agg["target"], agg["source"], agg["asr"], agg["asr_std"])}
    display = pd.DataFrame([
        {"Model (evaluated)": P.TASK_LABEL[t],
         **{f"from {P.TASK_LABEL[s]}": cell[t, s] for s in spec["tasks"]},
         **{f"Paper from {P.TASK_LABEL[s]}": fmt(P.PAPER_TABLE4.get(t, {}).get(s)) for s in spec["tasks"]}}
        for t in spec["tasks"]])
    n = int(agg["n_seeds"].min())
    caption = (f"Table 4 ({spec['run']}): attack success rate (%) of PGD-{spec['eval_steps']} examples crafted on the "
               f"({','.join(scenario(spec))}) model of one task (column) and evaluated on that of another (row), over all test images "
               f"(the diagonal is 1 − RA), {seeds_phrase(n)}; "
               f"paper values (CIFAR-10, ResNet-50) beside. config {spec['config_hash']}")
    write_table(display, agg, prefix, caption)
    return agg


# ------------------------------------------------------------------ Figure 5
def _label_counts(diagram, sets, total):
    """Write 'count\\n(percent of test images)' into every region of a venn diagram."""
    import itertools

    k = len(sets)
    for bits in itertools.product("01", repeat=k):
        region = "".join(bits)
        if region == "0" * k:
            continue
        inside = np.ones(total, bool)
        for b, s in zip(bits, sets):
            inside &= s if b == "1" else ~s
        label = diagram.get_label_by_id(region)
        if label is not None:
            count = int(inside.sum())
            label.set_text(f"{count}\n({100 * count / total:.1f}%)")
            label.set_fontsize(8)
    for label in diagram.set_labels:
        if label is not None:
            label.set_fontsize(9)


def figure5(spec: dict, prefix):
    """Venn diagrams of successful transfer attacks (first seed): the paper's panel —
    images whose attack from Model(Selfie) succeeds on Model(Rotation) and on
    Model(Jigsaw) — and, per source, the three-set diagram over all target models.
    Equal-area layouts; every region is labelled with its count and % of test images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib_venn import venn2, venn3
    from matplotlib_venn.layout.venn2 import DefaultLayoutAlgorithm as Layout2
    from matplotlib_venn.layout.venn3 import DefaultLayoutAlgorithm as Layout3

    from advss import protocol as P
    from advss.report import save_figure

    seed = spec["seeds"][0]
    tasks = list(spec["tasks"])
    if len(tasks) < 3:
        from advss.io import AdvssError

        raise AdvssError(f"Figure 5 needs three pretext tasks (a source and two targets), config has {tasks}")
    sets = success_sets(spec, seed)
    total = len(next(iter(sets[tasks[0]].values())))
    src = "selfie" if "selfie" in tasks else tasks[0]
    others = [t for t in tasks if t != src][:2]
    panels = 1 + (len(tasks) if len(tasks) == 3 else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.6), squeeze=False)
    two = [sets[src][t] for t in others]
    # equal-area regions: near-identical sets stay legible; the labels carry the counts
    d = venn2([set(np.flatnonzero(s)) for s in two], layout_algorithm=Layout2(fixed_subset_sizes=(1,) * 3),
              set_labels=[f"on {P.TASK_LABEL[t]}" for t in others], ax=axes[0, 0])
    _label_counts(d, two, total)
    axes[0, 0].set_title(f"attacks from {P.TASK_LABEL[src]} (the paper's Figure 5)", fontsize=9)
    if panels > 1:
        for ax, s in zip(axes[0, 1:], tasks):
            three = [sets[s][t] for t in tasks]
            d = venn3([set(np.flatnonzero(v)) for v in three], layout_algorithm=Layout3(fixed_subset_sizes=(1,) * 7),
                      set_labels=[f"on {P.TASK_LABEL[t]}" for t in tasks], ax=ax)
            _label_counts(d, three, total)
            ax.set_title(f"attacks from {P.TASK_LABEL[s]}", fontsize=9)
    fig.suptitle(f"Figure 5 ({spec['run']}): test images (of {total}) whose PGD-{spec['eval_steps']} attack succeeds, "
                 f"({','.join(scenario(spec))}) models, seed {seed}; config {spec['config_hash']}", fontsize=9)
    save_figure(fig, prefix)
    plt.close(fig)
