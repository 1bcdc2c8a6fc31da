"""The paper's experimental design as data (no torch): tasks, P/F modes, the
Table 3 scenarios, model-id grammar and the paper's reference numbers.

The workflow and the report both read this module, so the design lives once. The
workflow imports only this module and advss.classmap while it parses, so nothing
here may import torch or another advss module: the constants and checks the
workflow needs from the feature modules (robustness suites, AutoAttack's standard
budget, spec hashes, ensemble member sets) live here, and those modules alias them.
"""
from __future__ import annotations

import hashlib
import json
import re

TASKS = ("rotation", "jigsaw", "selfie")
TASK_LABEL = {"rotation": "Rotation", "jigsaw": "Jigsaw", "selfie": "Selfie"}

# Pretraining modes: the directory name of a pretrained model is "<task>-<mode>".
PRETRAIN_MODES = {"P2": "std", "P3": "adv"}
# Fine-tuning modes: F1 partial ST, F2 partial AT, F3 full ST, F4 full AT.
FINETUNE_MODES = {
    "F1": "partial-std",
    "F2": "partial-adv",
    "F3": "full-std",
    "F4": "full-adv",
}
FT_TO_F = {v: k for k, v in FINETUNE_MODES.items()}

# Table 3: 8 scenarios; P1 rows are shared by the three tasks.
TABLE3_SCENARIOS = (
    ("P1", "F3"), ("P1", "F4"),
    ("P2", "F3"), ("P2", "F4"),
    ("P3", "F1"), ("P3", "F2"), ("P3", "F3"), ("P3", "F4"),
)

# Revision numbers: bump one after a real bug fix to rerun exactly the jobs using it.
# jigsaw 2: the identity drawn as in the reference; train 2: the last partial batch dropped,
# partial fine-tuning freezes the transferred prefixes only, smoothing noise unclipped;
# evaluate 2: test numbers in fp32 whatever the training precision; ensemble 2 (AP+DPE's
# pretrainings only, the α > 0 path of advss.objectives.ensemble): the attack sums the member
# losses as eq. (3) does and carries the update's sign of α·g; the log-det in closed form;
# corruptions 2 (the CIFAR-10-C suite's jobs only): generated glass blur copies pixels as the
# released files do, not swaps them.
# contrastive 2 (the successors' pretrainings only): ColorJitter's four ops in a fresh order per
# image, as torchvision's, and the checkpoint keeps both BN copies (bn_copies) for dual-BN AFF;
# trades 2 (TRADES fine-tunings only): the attack's clean target in the crafting BN mode, which
# no longer moves the running statistics.
REVISION = {"data": 1, "pgd": 1, "rotation": 1, "jigsaw": 2, "selfie": 1, "train": 2, "evaluate": 2, "ensemble": 2,
            "corruptions": 2, "contrastive": 2, "trades": 2}

# Grammar of path segments, derived from TASKS (the one list of task names).
TASK_RE = "|".join(TASKS)
PT_RE = rf"({TASK_RE})-(std|adv)"
SRC_RE = r"scratch|" + PT_RE
FT_RE = r"(partial|full)-(std|adv)"
# Ablations (advss/ablations.py, workflow/rules/ablations_inputs.smk): the Table 7 pool-size and
# Table 8 smoothing pretrainings are fine-tuning sources; the one-shot baseline (AT +
# rotation auxiliary) is a fine-tuning id whose spec sets the task (advss/pretext/rotaux.py).
ABLATION_PT_RE = rf"({TASK_RE})-(adv-n\d+|smooth)"
SRC_RE += "|" + ABLATION_PT_RE
BASELINE_FT = "full-adv-rotaux"
# A fine-tuning trained for N epochs instead of finetune.epochs: '<ft>-ep<N>', its step
# milestones scaled by N / finetune.epochs (`scaled_optim`). The compute-matched baseline
# is 'full-adv-ep<E_pretrain + E_finetune>' from scratch (`matched_baselines`).
FT_RE += r"(-rotaux|-ep[1-9]\d*)?"  # parse_ft reads the mode; finetune_spec sets the task or the epochs
# Table 5's ensemble pretrainings (rules/ensemble_inputs.smk): AP+SE (α = 0) and AP+DPE with each sign
# of α·g in the weights' loss (advss.objectives.ensemble): 'ensemble-dpe' is +1, eq. (3) as written and the
# reference code; 'ensemble-dpe-neg' is -1, the diversity-promoting reading of the text.
ENSEMBLE_DPE = {1: ("dpe", "AP+DPE (+α·g, Eq. 3)"), -1: ("dpe-neg", "AP+DPE (−α·g, diversity)")}
ENSEMBLE_VARIANT_RE = "|".join(["se", *(v for v, _ in ENSEMBLE_DPE.values())])
ENSEMBLE_PT_RE = rf"ensemble-({ENSEMBLE_VARIANT_RE})"
SRC_RE += "|" + ENSEMBLE_PT_RE
# The paper's successors (issue 20; advss/pretext/contrastive.py, rules/robust_ssl_inputs.smk):
# contrastive pretrainings, one pretrained-model id per method, each with the paper's P mode.
# Kept out of TASKS, so that Table 3's sweep over the 2020 tasks does not grow; the config
# section `robust_ssl` trains them. 'acl' is ACL's dual-stream (DS) variant with dual BN,
# the one the ACL paper reports best; 'dynacl' adds DynACL's annealed schedule to it.
# Crops are resized bicubic in ACL's train_simCLR.py (SimCLR, ACL: RandomResizedCrop(...,
# interpolation=3)), bilinear in DynACL's train_DynACL.py (torchvision's default).
CONTRASTIVE = {
    "simclr": {"p": "P2", "objective": {"kind": "standard"}, "pretext": {"interpolation": "bicubic"}},
    "acl": {"p": "P3", "objective": {"kind": "acl"}, "pretext": {"dual_bn": True, "interpolation": "bicubic"}},
    "dynacl": {"p": "P3", "objective": {"kind": "acl"},  # momentum: its EMA encoder, m = 0.99 (MomentumHead)
               "pretext": {"dual_bn": True, "schedule": "dynacl", "momentum": 0.99}},
}
CONTRASTIVE_LABEL = {"simclr": "SimCLR", "acl": "ACL (DS)", "dynacl": "DynACL"}
CONTRASTIVE_RE = "|".join(CONTRASTIVE)
SRC_RE += "|" + CONTRASTIVE_RE
# DynACL++ (Luo et al. ICLR 2023; PKU-ML/DYNACL @7d143db: assign_label.py, LPAFT.py, LPAFT_AFF.py):
# DynACL's pretraining post-processed by pseudo-labels (k-means on its features,
# advss/pseudolabel.py), then linear probing (LP) and adversarial fine-tuning (AFT) on them,
# two jobs of the one loop (rules/dynaclpp.smk). Its AFT's model, saved as the pretraining of
# the source 'dynacl++' (pretrain/dynacl++/), is what SLF, ALF and AFF fine-tune, as RSB @319a200
# fine-tunes the released DynACL++ checkpoint. Not a pretrained-model id of the `pretrain` rule.
DYNACLPP, DYNACLPP_BASE = "dynacl++", "dynacl"
DYNACLPP_STAGES = {"lp": "dynacl++-lp", "aft": "dynacl++"}  # stage -> its directory under pretrain/
DYNACLPP_STAGE_RE = "|".join(re.escape(d) for d in DYNACLPP_STAGES.values())
SRC_RE += "|" + re.escape(DYNACLPP)
# Every successor the robust_ssl section can list: its P mode and its label.
SUCCESSOR_P = {**{m: v["p"] for m, v in CONTRASTIVE.items()}, DYNACLPP: "P3"}
SUCCESSOR_LABEL = {**CONTRASTIVE_LABEL, DYNACLPP: "DynACL++"}
# The successors' names for our fine-tuning modes (RobustSSL_Benchmark's SLF / ALF / AFF).
SUCCESSOR_FT = {"F1": "SLF", "F2": "ALF", "F4": "AFF"}
# Every pretrained-model id (one `pretrain` rule trains them all): per task, ablated, ensemble.
PRETRAIN_RE = "|".join([PT_RE, ABLATION_PT_RE, ENSEMBLE_PT_RE, CONTRASTIVE_RE])
# Ensembles of fine-tuned models: 'a+b+...' of task names (Table 6 from one member on;
# AutoAttack's ensembles from two).
MEMBERS_RE = rf"({TASK_RE})(\+({TASK_RE}))*"
AA_MEMBERS_RE = rf"({TASK_RE})(\+({TASK_RE}))+"

# Robustness beyond PGD (advss/robustness.py): the suites, the revision of that module
# (bump after a bug fix there: reruns exactly the robustness jobs) and the one-shot AT +
# rotation-auxiliary baseline's (src, ft) (Hendrycks et al. 2019).
ROBUSTNESS_SUITES = ("autoattack", "unforeseen", "corruptions")
ROBUSTNESS_REVISION = 2
ROTAUX = ("scratch", BASELINE_FT)
# AutoAttack's standard budget (Croce & Hein 2020), which version 'standard' must keep.
AUTOATTACK_STANDARD_BUDGET = {"n_iter": 100, "n_target_classes": 9, "n_queries": 5000, "fab_n_iter": 100}


def autoattack_settings(aa: dict) -> dict:
    """version and budget of the `autoattack` config part, checked before any job runs
    (the workflow calls it at parse time): 'standard' must keep the standard budget.
    Raises ValueError; advss.robustness.autoattack_settings turns it into an AdvssError."""
    version = aa.get("version", "standard")
    budget = {k: int(aa.get(k, v)) for k, v in AUTOATTACK_STANDARD_BUDGET.items()}
    if version == "standard" and budget != AUTOATTACK_STANDARD_BUDGET:
        raise ValueError(f"robustness.autoattack: version 'standard' fixes {AUTOATTACK_STANDARD_BUDGET}, "
                         f"got {budget}; set version: custom for a smaller budget")
    if version not in ("standard", "custom"):
        raise ValueError(f"robustness.autoattack.version must be standard or custom, not {version!r}")
    return {"version": version, **budget, "inhouse": bool(aa.get("inhouse", True))}


def spec_hash(spec: dict) -> str:
    """The hash of a job spec (result metadata, resume guards, report captions' config hash)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def member_sets(tasks):
    """Every pair and the whole set of tasks, each as a sorted 'a+b' id (Table 6's rows)."""
    import itertools

    tasks = sorted(tasks)
    return ["+".join(c) for k in range(2, len(tasks) + 1) for c in itertools.combinations(tasks, k)]


def ensemble_dpe_id(sign: int) -> str:
    """Pretraining id of AP+DPE with this sign of α·g: 'ensemble-dpe' (+1), 'ensemble-dpe-neg' (-1)."""
    if sign not in ENSEMBLE_DPE:
        raise ValueError(f"ensemble sign must be +1 or -1, not {sign!r}")
    return f"ensemble-{ENSEMBLE_DPE[sign][0]}"


def ensemble_signs(section: dict) -> list[int]:
    """The AP+DPE signs a config's `ensemble` section trains, +1 first: `signs`, or the older
    one-value `sign` (a one-sign Table 5); both signs when neither is given."""
    if "sign" in section and "signs" in section:
        raise ValueError("config section 'ensemble': give `signs` (a list, e.g. [1, -1]) or the older "
                         "one-value `sign`, not both")
    signs = section["signs"] if "signs" in section else [section["sign"]] if "sign" in section else [1, -1]
    if not signs or any(s not in ENSEMBLE_DPE for s in signs):
        raise ValueError(f"config section 'ensemble': signs must be a list of +1 and/or -1, not {signs!r}")
    return sorted(set(signs), reverse=True)


def pretrain_id(task: str, p: str) -> str:
    """Model id of a pretrained trunk: P2 -> '<task>-std', P3 -> '<task>-adv'."""
    if task not in TASKS:
        raise ValueError(f"unknown pretext task {task!r}; choose from {TASKS}")
    if p not in PRETRAIN_MODES:
        raise ValueError(f"unknown pretraining mode {p!r}; choose from {sorted(PRETRAIN_MODES)}")
    return f"{task}-{PRETRAIN_MODES[p]}"


def source_id(task: str, p: str) -> str:
    """Fine-tuning source: 'scratch' for P1 (shared by all tasks), else the pretrain id."""
    return "scratch" if p == "P1" else pretrain_id(task, p)


def finetune_id(f: str) -> str:
    if f not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tuning mode {f!r}; choose from {sorted(FINETUNE_MODES)}")
    return FINETUNE_MODES[f]


def parse_ft(ft: str) -> tuple[bool, bool]:
    """'partial-adv' -> (partial=True, adversarial=True)."""
    m = re.fullmatch(FT_RE, ft)
    if not m:
        raise ValueError(f"bad fine-tuning id {ft!r}; expected {FT_RE}")
    return m.group(1) == "partial", m.group(2) == "adv"


def ft_epochs(ft: str) -> int | None:
    """N of a fine-tuning id '<ft>-ep<N>' (trained for N epochs), None for the others."""
    m = re.fullmatch(FT_RE, ft)
    if not m:
        raise ValueError(f"bad fine-tuning id {ft!r}; expected {FT_RE}")
    return int(m.group(3)[3:]) if (m.group(3) or "").startswith("-ep") else None


def scaled_optim(optim: dict, epochs: int, base_epochs: int) -> dict:
    """The fine-tuning optimiser for `epochs` instead of `base_epochs`: step milestones at the
    same fractions of training, rounded half up to whole epochs (60/80 of 100 -> 120/160 of
    200). Warm-up is in steps and stays; cosine spans whatever epochs the job runs."""
    if not optim.get("milestones"):
        return dict(optim)
    return {**optim, "milestones": [(2 * m * epochs + base_epochs) // (2 * base_epochs) for m in optim["milestones"]]}


def pretrain_epochs(pretrain: dict, task: str) -> int:
    """Pretraining epochs of `task`: config pretrain.epochs, one number or one per task."""
    e = pretrain["epochs"]
    return int(e[task] if isinstance(e, dict) else e)


def matched_baselines(cfg: dict) -> dict:
    """{task: fine-tuning id} of the compute-matched baseline: (P1,F4) from scratch for the
    task's pretraining epochs plus the fine-tuning's, 'full-adv-ep<N>', so that tasks with
    the same budget share one job. On when finetune.matched_baseline (default true) and a
    pretrained F4 scenario (the one it is matched to) runs; {} otherwise."""
    fc = cfg["finetune"]
    if not fc.get("matched_baseline", True) or not {("P2", "F4"), ("P3", "F4")} & set(map(tuple, fc["scenarios"])):
        return {}
    return {t: f"full-adv-ep{pretrain_epochs(cfg['pretrain'], t) + int(fc['epochs'])}"
            for t in cfg["pretrain"]["tasks"]}


def ladder(cfg: dict) -> list[str]:
    """The (P1,F4) compute ladder, cheapest rung first: fine-tuning ids from scratch for the
    plain (P1,F4) (finetune.epochs, the paper's AT budget), each matched baseline's epochs and
    each of finetune.ladder's epochs ('full-adv-ep<N>', milestones scaled by `scaled_optim`).
    Its budgets are compared in passes per image (`passes_per_image` × epochs, read from the
    runs' meta.json by advss.claims), not in epochs. [] without finetune.ladder: the matched
    rungs alone sit below every P3 method in passes (its pretraining costs K + 2 an epoch)."""
    fc = cfg["finetune"]
    rungs = [int(n) for n in fc.get("ladder") or []]
    if any(n < 1 for n in rungs):
        raise ValueError(f"finetune.ladder must list positive epoch counts, not {fc['ladder']!r}")
    if not rungs:
        return []
    epochs = set(rungs) | {ft_epochs(ft) for ft in matched_baselines(cfg).values()}
    base = int(fc["epochs"])
    return ["full-adv" if n == base else f"full-adv-ep{n}" for n in sorted(epochs | {base})]


def matched_label(ft: str) -> str:
    """Table 3's scenario label and Figure 1's point of a matched baseline."""
    return f"(P1,F4), {ft_epochs(ft)} epochs"


def model_label(src: str, ft: str) -> str:
    """'(P3,F4) Rotation' of a fine-tuned model id (src, ft); the matched baseline's and the
    one-shot baseline's own names; other ids as they are."""
    f = FT_TO_F.get(ft)
    if (src, ft) == ("scratch", BASELINE_FT):
        return "One-shot AT + rotation aux."
    if src == "scratch" and ft_epochs(ft):
        return matched_label(ft)
    if src == "scratch" and f:
        return f"(P1,{f})"
    m = re.fullmatch(PT_RE, src)
    if not (m and f):
        return f"{src}/{ft}"
    p = next(k for k, v in PRETRAIN_MODES.items() if v == m.group(2))
    return f"({p},{f}) {TASK_LABEL[m.group(1)]}"


def passes_per_image(spec: dict) -> float:
    """The budget rule: forward+backward passes per training image and epoch of a training
    job, from its spec. A pass is one forward and one backward through the network; PGD-K
    costs K of them (each step differentiates the loss to the input). Hence ST (P2, F1, F3)
    and Gaussian-noise smoothing 1; Madry AT (F2, F4) K + 1 (the attack, then the update on
    the adversarial loss); P3's mean of clean and adversarial losses K + 2 (the clean loss
    adds a pass); TRADES K + 2 (its KL attack, then CE(clean) + β·KL through both inputs;
    the gradient-free clean forward is not counted); ACL/DynACL K + 2 (PGD on NT-Xent, then
    the clean and the adversarial NT-Xent). The rotation-auxiliary baseline and the
    contrastive task train on two views of each image (×2), but with DynACL's momentum encoder
    view 1 passes it only in the attack (K; its loss forwards need no gradient): 2K + 2. A partial fine-tuning's update is counted as a whole
    pass, though its backward could stop at the trained part (the attack's cannot).
    Validation and test evaluation are not counted. NaN
    for the ensemble objective (three inputs and a double backward: not on this scale).
    Selfie's passes go through its patch network and transformer, not the ResNet: a pass
    count, not FLOPs."""
    obj, k = spec.get("objective", {}), int(spec.get("threat", {}).get("train_steps", 0))
    kind = obj.get("kind")
    if kind in ("standard", "smoothing"):
        per = 1
    elif kind == "adversarial":
        per = k + (2 if obj.get("mix", "adv") == "clean+adv" else 1)
    elif kind in ("trades", "acl"):  # acl: PGD-K, then the clean and the adversarial NT-Xent
        per = k + 2
    else:
        return float("nan")
    if (spec.get("pretext") or {}).get("contrastive", {}).get("momentum"):
        # DynACL's momentum encoder: view 1's loss forwards carry no gradient; only its attack's K passes count
        return float(per + (k if kind == "acl" else 0))
    return float(per * (2 if spec.get("task") in ("rotaux", "contrastive") else 1))  # two views per image


def pretrain_chain(src: str) -> list[str]:
    """The pretraining directories (under pretrain/) whose training made the source `src` of a
    fine-tuning, its own first: DynACL++'s AFT, its LP and DynACL's pretraining; one for any
    other pretrained source, none for 'scratch'. Their passes all count in a model's budget."""
    if src == "scratch":
        return []
    if src == DYNACLPP:
        return [DYNACLPP_STAGES["aft"], DYNACLPP_STAGES["lp"], DYNACLPP_BASE]
    return [src]


def dynaclpp_stage_keys(stage: str, settings: dict) -> dict:
    """The job-spec keys of DynACL++'s LP ('lp') or AFT ('aft') from their fine-tuning
    `settings` (`finetune_settings`), on the pseudo-labels (the job's --labels). LP: the head
    alone, cross-entropy, the trunk frozen in eval mode (LPAFT.py's train_head, with the trunk's
    requires_grad off), its head zeroed; AFT: everything, adversarially (LPAFT.py's trades_loss),
    starting from LP's probed head (head_init 'init'). Both train through the adversarial BN copy
    and carry the clean one (keep_bn_copies), which LPAFT_AFF.py's pseudo-label stage never uses
    (natural_mode='pgd'), so one chain serves SLF/ALF (LPAFT.py) and the dual-BN AFF (LPAFT_AFF.py)."""
    if stage not in DYNACLPP_STAGES:
        raise ValueError(f"DynACL++ stage must be one of {sorted(DYNACLPP_STAGES)}, not {stage!r}")
    keys = finetune_spec_keys(settings, adv=stage == "aft")
    if stage == "lp":
        return {**keys, "partial": True, "partial_trains": "head", "eval_ra": False, "keep_bn_copies": True}
    return {**keys, "partial": False, "head_init": "init", "eval_ra": True, "keep_bn_copies": True}


def pretrain_kind(pt: str) -> str:
    """Which spec a pretrained-model id gets: 'task' (P2/P3 of one task), 'ensemble'
    (Table 5) or 'ablation' (Table 7's pools, Table 8's smoothing)."""
    for kind, rx in (("task", PT_RE), ("ensemble", ENSEMBLE_PT_RE), ("ablation", ABLATION_PT_RE),
                     ("contrastive", CONTRASTIVE_RE)):
        if re.fullmatch(rx, pt):
            return kind
    raise ValueError(f"bad pretrained-model id {pt!r}; expected {PRETRAIN_RE}")


def contrastive_spec(method: str, options: dict | None = None) -> dict:
    """The spec keys of a contrastive pretraining (the workflow's and gpucheck's): the
    'contrastive' task with the method's fixed options over the config's, its objective,
    RA validated for P3, and no crop/flip of the loop (the task draws its own views)."""
    if method not in CONTRASTIVE:
        raise ValueError(f"unknown contrastive method {method!r}; choose from {sorted(CONTRASTIVE)}")
    m = CONTRASTIVE[method]
    return {"task": "contrastive", "pretext": {"contrastive": {**(options or {}), **m["pretext"]}},
            "objective": dict(m["objective"]), "eval_ra": m["p"] == "P3", "augment": False,
            "weight_init": "kaiming_fan_out"}  # ACL's and DynACL's ResNets (models/resnet_multi_bn.py)


# ------------------------------------------------------------ fine-tuning settings
# A fine-tuning's settings, by the config's names: the `finetune` section's for every model,
# with the successors' per-mode (`robust_ssl.modes.<F>`) and per-method
# (`robust_ssl.method_modes.<method>.<F>`) settings over them (`finetune_settings`), turned
# into job-spec keys by one function (`finetune_spec_keys`) for every fine-tuning job.
#   objective      madry (PGD cross-entropy AT) | trades, for the adversarial modes F2/F4
#   trades_beta, trades_start_std   TRADES' β and its start's noise (0.001 TRADES/ACL, 0 RSB)
#   epochs, batch_size, augment, optim (merged key by key over the base), val_max
#   bn             single | dual: dual-BN fine-tuning from a dual-BN pretraining (RSB's AFF)
#   data           split (45k fit / 5k validation) | all (every training image, RSB)
#   select         best (validation RA, or TA for F1/F3) | last (the last epoch, RSB)
#   head_init      default | zero (RSB and DynACL zero the linear head) | init (the checkpoint's: a probed head)
#   bn_mode_when_crafting   the attack's BN mode in this stage (over threat's)
FT_SETTINGS = ("objective", "trades_beta", "trades_start_std", "epochs", "batch_size", "augment", "optim",
               "val_max", "bn", "data", "select", "head_init", "bn_mode_when_crafting")
FT_CHOICES = {"objective": ("madry", "trades"), "bn": ("single", "dual"), "data": ("split", "all"),
              "select": ("best", "last"), "head_init": ("default", "zero", "init"),
              "bn_mode_when_crafting": ("train", "eval")}


def finetune_settings(finetune: dict, robust_ssl: dict | None = None, method: str | None = None,
                      f: str | None = None) -> dict:
    """The settings of one fine-tuning: the finetune section's, then robust_ssl.modes.<f>, then
    robust_ssl.method_modes.<method>.<f> over them (`optim` merged key by key, so a layer can
    change the milestones alone). Without robust_ssl, the finetune section's.

    Why RobustSSL_Benchmark's (RSB @319a200) settings are what config/robust-ssl.yaml sets:
    its published rows are what the successors' rows stand beside, so they must be trained as
    those were. SLF and ALF train only the linear head on frozen features, hence a small lr
    (0.01), a big batch (512) and 25 epochs; ALF's attack is plain PGD-10 on the cross-entropy,
    since only the head learns. AFF trains everything with TRADES; for ACL and DynACL on both BN
    copies the pretraining left (clean inputs through the clean BN, adversarial ones through the
    adversarial BN), which is why the pretraining keeps both. DynACL's AFF is shorter (25 epochs,
    milestones 15, 20) than ACL's (100, [40, 60]) because DynACL's own scripts tuned it so, and
    RSB adopted them per method. RSB fine-tunes on all 50k images and reports the last epoch
    (no validation split), and zeroes the linear head so every mode starts from the same readout."""
    out = {k: v for k, v in finetune.items() if k in FT_SETTINGS}
    rs = robust_ssl or {}
    for layer in (rs.get("modes", {}).get(f, {}), rs.get("method_modes", {}).get(method, {}).get(f, {})):
        for k, v in layer.items():
            if k not in FT_SETTINGS:
                raise ValueError(f"unknown fine-tuning setting {k!r}; choose from {FT_SETTINGS}")
            out[k] = {**out.get(k, {}), **v} if k == "optim" else v
    for k, allowed in FT_CHOICES.items():
        if out.get(k, allowed[0]) not in allowed:
            raise ValueError(f"fine-tuning setting {k} must be one of {allowed}, not {out[k]!r}")
    if out.get("data") == "all" and out.get("select") != "last":
        raise ValueError("fine-tuning setting data 'all' trains on the validation images: it needs select 'last'")
    return out


def finetune_spec_keys(settings: dict, adv: bool) -> dict:
    """The job-spec keys of fine-tuning `settings` for an adversarial (F2/F4) or standard mode.
    Settings at their defaults add no key, so the specs (and hashes) of configs that do not
    use them stay as they were."""
    if not adv:
        objective = {"kind": "standard"}
    elif settings.get("objective", "madry") == "madry":
        objective = {"kind": "adversarial", "mix": "adv"}
    else:
        objective = {"kind": "trades", "trades_beta": settings.get("trades_beta", 6.0)}
        if "trades_start_std" in settings:
            objective["start_std"] = settings["trades_start_std"]
    keys = {"objective": objective, "epochs": settings["epochs"], "batch_size": settings["batch_size"],
            "augment": settings.get("augment", True), "optim": settings["optim"], "val_max": settings.get("val_max"),
            "select_by": "last" if settings.get("select") == "last" else "val_ra" if adv else "val_ta"}
    for key, spec_key, value in (("data", "train_data", "all"), ("bn", "dual_bn", True)):
        if settings.get(key) == (value if key != "bn" else "dual"):
            keys[spec_key] = value
    if settings.get("head_init", "default") != "default":  # zero (RSB, DynACL) or init (a probed head)
        keys["head_init"] = settings["head_init"]
    return keys


def stage_threat(threat: dict, section: dict) -> dict:
    """The threat model of one stage: `threat`, with the section's own bn_mode_when_crafting
    where it sets one (the 2020 tasks' P3 crafts in train mode, as the paper's code; TRADES
    and ACL craft in eval mode)."""
    mode = section.get("bn_mode_when_crafting")
    return {**threat, "bn_mode_when_crafting": mode} if mode else threat


def fine_tuning_label(spec: dict) -> str:
    """How a fine-tuning job trains, in words, from its spec: the objective (PGD-K
    cross-entropy AT, TRADES with its β, or CE), the BN copies and the head's init."""
    obj = spec["objective"]
    if obj["kind"] == "adversarial":
        text = f"PGD-{spec['threat']['train_steps']} CE AT"
    elif obj["kind"] == "trades":
        text = f"TRADES β={obj.get('trades_beta', 6.0):g}" + (", dual BN" if spec.get("dual_bn") else "")
    else:
        text = "CE"
    return text + (", zero head" if spec.get("head_init") == "zero" else "")


def data_selection(spec: dict) -> str:
    """A fine-tuning job's data and selection in words, from its spec (the tables' column)."""
    data = "all training images" if spec.get("train_data") == "all" else "fit split"
    sel = {"last": "last epoch", "val_ra": "best val. RA", "val_ta": "best val. TA"}.get(spec.get("select_by"), "?")
    return f"{data}, {sel}"


def parse_pt(pt: str) -> tuple[str, str]:
    """'rotation-adv' -> ('rotation', 'adv')."""
    m = re.fullmatch(PT_RE, pt)
    if not m:
        raise ValueError(f"bad pretrained-model id {pt!r}; expected {PT_RE}")
    return m.group(1), m.group(2)


def scenario_jobs(scenarios, tasks):
    """Expand (P, F) scenarios over tasks into unique (src, ft) fine-tuning jobs."""
    jobs = []
    for p, f in scenarios:
        for t in tasks:
            job = (source_id(t, p), finetune_id(f))
            if job not in jobs:
                jobs.append(job)
    return jobs


def pretrain_jobs(scenarios, tasks):
    """Pretrained-model ids that the given scenarios need."""
    out = []
    for p, _ in scenarios:
        if p == "P1":
            continue
        for t in tasks:
            pid = pretrain_id(t, p)
            if pid not in out:
                out.append(pid)
    return out


# ---------------------------------------------------------------- paper numbers
# Table 3, CIFAR-10, ResNet-50: (TA, RA, epochs to best).
_P1 = {"P1F3": (94.24, 0.00, 92), "P1F4": (84.72, 47.22, 99)}
PAPER_TABLE3 = {
    "selfie": {**_P1, "P2F3": (95.09, 0.00, 97), "P2F4": (85.56, 50.42, 60),
               "P3F1": (78.93, 6.30, 82), "P3F2": (74.30, 37.65, 64),
               "P3F3": (94.69, 0.00, 86), "P3F4": (86.02, 51.05, 50)},
    "rotation": {**_P1, "P2F3": (95.45, 0.00, 92), "P2F4": (86.66, 50.95, 45),
                 "P3F1": (86.83, 18.22, 99), "P3F2": (82.32, 45.10, 47),
                 "P3F3": (94.79, 0.00, 92), "P3F4": (85.66, 50.40, 46)},
    "jigsaw": {**_P1, "P2F3": (93.93, 0.00, 89), "P2F4": (85.18, 50.94, 46),
               "P3F1": (80.47, 2.68, 87), "P3F2": (72.76, 32.59, 51),
               "P3F3": (93.06, 0.00, 93), "P3F4": (84.50, 49.61, 48)},
}
# Table 4: ASR (%), rows = evaluated model, columns = attack source.
PAPER_TABLE4 = {
    "selfie": {"selfie": 48.95, "rotation": 37.75, "jigsaw": 36.65},
    "rotation": {"selfie": 38.92, "rotation": 49.60, "jigsaw": 38.12},
    "jigsaw": {"selfie": 38.96, "rotation": 39.56, "jigsaw": 51.17},
}
# Table 5: (TA, RA, epochs).
PAPER_TABLE5 = {
    "selfie": (86.02, 51.05, 50), "rotation": (85.66, 50.40, 46), "jigsaw": (83.74, 48.83, 48),
    "AP+SE": (84.44, 49.53, 47), "AP+DPE": (83.00, 52.22, 56),
}
# Table 6: (TA, RA) of ensembles of (P3,F4) models.
PAPER_TABLE6 = {
    "jigsaw+rotation": (85.36, 53.08), "jigsaw+selfie": (85.64, 53.32),
    "rotation+selfie": (86.51, 53.83), "jigsaw+rotation+selfie": (86.04, 54.64),
}
# Table 7: (TA, RA, epochs) per pretraining-pool size.
PAPER_TABLE7 = {
    "30K": {"F2": (65.65, 30.00, 70), "F4": (85.29, 49.64, 42)},
    "50K": {"F2": (66.87, 30.42, 87), "F4": (85.26, 49.66, 61)},
    "150K": {"F2": (67.73, 30.24, 95), "F4": (85.18, 50.61, 55)},
}
# Table 8: random-smoothing pretraining, (TA, RA, epochs).
PAPER_TABLE8 = {
    "F2": {"selfie": (71.9, 30.57, 61), "rotation": (74.7, 34.23, 78), "jigsaw": (74.66, 33.84, 68)},
    "F4": {"selfie": (85.14, 50.23, 48), "rotation": (85.62, 51.25, 46), "jigsaw": (85.18, 50.94, 46)},
}
# Figure 1: epochs to best RA.
PAPER_FIGURE1_EPOCHS = {"Ensemble fine-tune": 144, "Baseline": 99, "Ensemble pretrain": 56,
                        "Selfie": 50, "Jigsaw": 48, "Rotation": 46}
# Beyond the paper (issue 20): published CIFAR-10 figures of the successors, L∞ ε = 8/255,
# (clean %, AutoAttack %, architecture, fine-tuning, source). RobustSSL_Benchmark re-evaluates
# the published checkpoints with AFF (dual-BN TRADES for ACL/DynACL) and AutoAttack; RobustBench lists this paper's
# ensemble of three ResNet-50s (Chen2020Adversarial), its only self-supervised entry.
RSB_README = "RobustSSL_Benchmark's README (GodXuxilie/RobustSSL_Benchmark, @8ec7fc4, the last commit that shows its table), AFF + AutoAttack"
PUBLISHED_ROBUST_SSL = {
    "acl": (81.25, 49.62, "ResNet-18", "AFF", RSB_README),
    "dynacl": (81.86, 50.52, "ResNet-18", "AFF", RSB_README),
    "dynacl++": (81.93, 50.34, "ResNet-18", "AFF", RSB_README),
    "chen2020": (86.04, 51.56, "3× ResNet-50 ensemble", "F4", "RobustBench cifar10 Linf, Chen2020Adversarial"),
}
PUBLISHED_LABEL = {**CONTRASTIVE_LABEL, "dynacl++": "DynACL++", "chen2020": "Chen et al. 2020 ensemble"}
