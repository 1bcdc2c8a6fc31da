"""Tables (CSV, Markdown, LaTeX, HTML) and figures (PNG, PDF) built from result files
only: `python -m advss table|figure NAME` calls REGISTRY[NAME](spec, prefix).

Every table puts the measured numbers next to the paper's. With several seeds a
cell shows mean ± std over seeds and the CSV adds n and a 95% t-interval
(advss.tables). A new table is one builder function in a module of this package
plus one entry in REGISTRY.
"""
from __future__ import annotations

from advss.io import AdvssError
from advss.report import ablations, claims, compute, ensembles, finetuning, robustness, successors, transfer

REGISTRY = {
    "table3": finetuning.table3,
    "figure1": finetuning.figure1,
    "table4": transfer.table4,
    "table5": ensembles.table5,
    "table6": ensembles.table6,
    "figure5": transfer.figure5,
    "autoattack": robustness.autoattack_table,
    "unforeseen": robustness.unforeseen_table,
    "cifar10c": robustness.cifar10c_table,
    "figure3": robustness.figure3,
    "figure4": robustness.figure4,
    "table7": ablations.table7,
    "table8": ablations.table8,
    "table_rotaux": ablations.table_rotaux,
    "figure_pool": ablations.figure_pool,
    "claims": claims.table_claims,
    "robust_ssl": successors.table_robust_ssl,
    "compute": compute.table_compute,
    "figure_compute": compute.figure_compute,
    # --- more tables and figures register here, one line each: "name": module.function, ---
}


def make(name: str, spec: dict, prefix):
    if name not in REGISTRY:
        raise AdvssError(f"unknown table or figure {name!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[name](spec, prefix)
