"""Table 4 (attack success rates between the per-task models) and Figure 5 (Venn
diagrams of successful transfer attacks), from the transfer jobs' npz files."""
from __future__ import annotations

import numpy as np
import pandas as pd

from advss import protocol as P
from advss.io import AdvssError
from advss.results import transfer_npz
from advss.tables import aggregate, fmt, save_figure, seeds_phrase, write_table


def scenario(spec):
    """The (P, F) scenario whose per-task models are attacked (the paper: (P3,F4))."""
    return tuple(spec.get("transfer_scenario", ("P3", "F4")))


def success_sets(spec, seed):
    """{source task: {target task: bool vector}} for the scenario's models of one seed."""
    p, f = scenario(spec)
    out = {}
    for s in spec["tasks"]:
        z = transfer_npz(spec["run_dir"], P.source_id(s, p), P.finetune_id(f), seed)
        names = [str(t) for t in z["targets"]]
        out[s] = {t: z["success"][names.index(P.source_id(t, p))] for t in spec["tasks"]}
    return out


def table4(spec: dict, prefix):
    """ASR (%) of PGD crafted on Model(source) against Model(target), rows = target."""
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
               f"paper values (CIFAR-10, ResNet-50) beside.")
    return write_table(display, agg, prefix, caption, spec["config_hash"])


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


    seed = spec["seeds"][0]
    tasks = list(spec["tasks"])
    if len(tasks) < 3:
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
