# Every table and figure of the workflow, in one registry (REPORTS): rules/report.smk makes
# one rule per entry, named by its key, running `python -m advss <kind> <file> --spec ...`.
# A new table: its builder in advss/report/ and one entry here (plus its inputs function).
# Included after every feature's *_inputs.smk, whose helpers the entries name.
import sys
from dataclasses import dataclass

# The HTML report's sections (Snakemake report categories), in the paper's order.
SECTIONS = {
    "claims": "0 Claims of the paper (a summary of the sections below)",
    "core": "1 Pretraining × fine-tuning (Table 3, Figure 1)",
    "ensembles": "2 Ensembles and transfer attacks (Tables 4–6, Figure 5)",
    "robustness": "3 Robustness beyond PGD (AutoAttack, unforeseen attacks, CIFAR-10-C)",
    "ablations": "4 Ablations (Tables 7–8, pretraining-pool size, the one-shot baseline)",
    "successors": "5 Beyond the paper: its successors (SimCLR, ACL, DynACL) under the same protocol",
    "compute": "6 Beyond the paper: robustness against training compute",
}


@dataclass(frozen=True)
class Result:
    """One table or figure: `inputs` and `spec` are functions of the wildcards; `file` names
    results/<run>/{tables,figures}/<file>.* and the builder (`advss table|figure <file>`);
    `on`: built by all_tables / all_figures (its config section asks for it)."""

    inputs: object
    spec: object
    message: str
    section: str
    label: str
    on: bool = True
    file: str = ""


# Table 3 and Figure 1 (the core); each feature's inputs are in its *_inputs.smk.
def pretrain_metas(srcs):
    """The pretrainings' meta.json: their epochs and objectives are the budgets' first half
    (every job a source stands on: DynACL++'s AFT, LP and DynACL's, P.pretrain_chain).
    """
    return [
        f"results/{RUN}/pretrain/{pt}/seed{s}/meta.json"
        for src in srcs
        for pt in P.pretrain_chain(src)
        for s in SEEDS
    ]


def table3_inputs(wildcards):
    aa = finetune_results("eval/autoattack.json", robustness_jobs(AA)) if AA else []
    return (
        finetune_results("test.json")
        + finetune_results("meta.json")
        + aa
        + pretrain_metas(PT_JOBS)
    )


def figure1_inputs(wildcards):
    """(P1,F4), each task's (P3,F4), the matched baselines, the ensemble pretraining's point and
    the red star (the fine-tuned ensemble's result, seed{k}.json of advss.ensemble_eval).
    """
    jobs = (
        [("scratch", "full-adv")]
        + [(P.pretrain_id(t, "P3"), "full-adv") for t in TASKS]
        + MATCHED_JOBS
    )
    jobs += [(src, "full-adv") for _, src in FIGURE1_EXTRA]
    star = (
        [f"results/{RUN}/ensembles/{FIGURE1_STAR}/seed{s}.json" for s in SEEDS]
        if FIGURE1_STAR
        else []
    )
    return (
        finetune_results("test.json", jobs) + finetune_results("meta.json", jobs) + star
    )


REPORTS = {
    "table3": Result(
        table3_inputs,
        report_spec,
        "Table 3: the 8 scenarios × 3 pretext tasks",
        "core",
        "Table 3",
    ),
    "figure1": Result(
        figure1_inputs,
        report_spec,
        "Figure 1: TA vs RA, marker size = epochs to best",
        "core",
        "Figure 1",
    ),
    "table_autoattack": Result(
        autoattack_table_inputs,
        robustness_report_spec,
        "AutoAttack vs PGD on the same test images",
        "robustness",
        "AutoAttack table",
        on=bool(AA),
        file="autoattack",
    ),
    "table_unforeseen": Result(
        unforeseen_inputs,
        robustness_report_spec,
        "Accuracy under the unforeseen attacks, per attack and ε",
        "robustness",
        "unforeseen table",
        on=bool(UF),
        file="unforeseen",
    ),
    "table_cifar10c": Result(
        cifar10c_inputs,
        robustness_report_spec,
        "CIFAR-10-C accuracy per corruption and severity",
        "robustness",
        "CIFAR-10-C table",
        on=bool(CC),
        file="cifar10c",
    ),
    "figure3": Result(
        figure3_inputs,
        robustness_report_spec,
        "Figure 3: unforeseen attacks, (P3,F4)-Rotation vs the rotation-auxiliary baseline",
        "robustness",
        "Figure 3",
        on=bool(UF and ROTAUX_ON),
    ),
    "figure4": Result(
        figure4_inputs,
        robustness_report_spec,
        "Figure 4: unforeseen attacks, (P3,F4) per pretext task",
        "robustness",
        "Figure 4",
        on=bool(UF),
    ),
    "claims": Result(
        claims_inputs,
        report_spec,
        "Claims: each directional claim of the paper, with its interval over seeds (McNemar with one seed)",
        "claims",
        "Claims",
    ),
    "table7": Result(
        table7_inputs,
        ablation_report_spec,
        "Table 7: pretraining-pool size",
        "ablations",
        "Table 7",
        on="pool" in ABL,
    ),
    "table8": Result(
        table8_inputs,
        ablation_report_spec,
        "Table 8: random-smoothing pretraining",
        "ablations",
        "Table 8",
        on="smoothing" in ABL,
    ),
    "table_rotaux": Result(
        table_rotaux_inputs,
        ablation_report_spec,
        "The one-shot AT + rotation-auxiliary baseline beside (P1,F4) and (P3,F4)",
        "ablations",
        "One-shot baseline",
        on="baseline" in ABL,
    ),
    "figure_pool": Result(
        table7_inputs,
        ablation_report_spec,
        "Figure: TA and RA against pretraining-pool size (Table 7)",
        "ablations",
        "Pool-size figure",
        on="pool" in ABL,
    ),
    "table5": Result(
        table5_inputs,
        ensemble_report_spec,
        "Table 5: single-task vs ensemble adversarial pretraining (AP+SE, AP+DPE with each sign)",
        "ensembles",
        "Table 5",
        on=bool(ENS),
    ),
    # Table 6 needs at least one pair of tasks, Figure 5 a source and two targets.
    "table4": Result(
        transfer_results,
        transfer_report_spec,
        "Table 4: transfer attack success rates",
        "ensembles",
        "Table 4",
        on=bool(XFER),
    ),
    "table6": Result(
        table6_inputs,
        transfer_report_spec,
        "Table 6: ensembles of fine-tuned models",
        "ensembles",
        "Table 6",
        on=bool(XFER) and len(TASKS) >= 2,
    ),
    "figure5": Result(
        transfer_results,
        transfer_report_spec,
        "Figure 5: Venn diagrams of successful transfer attacks",
        "ensembles",
        "Figure 5",
        on=bool(XFER) and len(TASKS) >= 3,
    ),
    "table_robust_ssl": Result(
        robust_ssl_inputs,
        robust_ssl_report_spec,
        "The successors (SimCLR, ACL, DynACL) beside the 2020 tasks, published figures beside",
        "successors",
        "Successors table",
        on=bool(RSSL),
        file="robust_ssl",
    ),
    # every method and the (P1,F4) ladder at their passes per image (claims_inputs.smk: compute_inputs)
    "table_compute": Result(
        compute_report_inputs,
        report_spec,
        "Robustness against training compute: every method and the (P1,F4) ladder, passes per image",
        "compute",
        "Compute table",
        on=bool(LADDER),
        file="compute",
    ),
    "figure_compute": Result(
        compute_report_inputs,
        report_spec,
        "Figure: AutoAttack RA, PGD RA and TA against passes per training image (log)",
        "compute",
        "Compute figure",
        on=bool(LADDER),
    ),
}


def result_kind(name):
    return "figure" if name.startswith("figure") else "table"


def result_file(name):
    return REPORTS[name].file or name


def result_main(name):
    """The output the builder is told to write (--out): a table's csv, a figure's png."""
    key = "png" if result_kind(name) == "figure" else "csv"

    def main(wildcards, output):
        return output[key]

    return main


def result_outputs(name):
    """Named outputs of a table (csv first: the builder's --out; .html is the report's item)
    or a figure (png first, also the report's item), with the caption workflow/report/<file>.rst
    where one is written."""
    r, file, kind = REPORTS[name], result_file(name), result_kind(name)
    caption = Path(WORKFLOW_DIR, "report", f"{file}.rst")
    item = dict(
        caption=f"../report/{file}.rst" if caption.exists() else None,
        category=SECTIONS[r.section],
        labels={"result": r.label},
    )
    if kind == "figure":
        return dict(
            png=report(f"results/{RUN}/figures/{file}.png", **item),
            pdf=f"results/{RUN}/figures/{file}.pdf",
        )
    out = {ext: f"results/{RUN}/tables/{file}.{ext}" for ext in ("csv", "md", "tex")}
    return dict(out, html=report(f"results/{RUN}/tables/{file}.html", **item))


# What all_tables / all_figures build.
TABLES = [
    result_file(n) for n, r in REPORTS.items() if r.on and result_kind(n) == "table"
]
FIGURES = [
    result_file(n) for n, r in REPORTS.items() if r.on and result_kind(n) == "figure"
]
if UF and not ROTAUX_ON:
    print(
        f"advss: Figure 3 is skipped: it needs the one-shot rotation-auxiliary baseline, "
        f"which config section ablations.baseline turns on",
        file=sys.stderr,
    )
