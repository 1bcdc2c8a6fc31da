"""The successors' table (issue 20): the 2020 pretext tasks' (P3,F4) beside SimCLR, ACL and
DynACL fine-tuned under the same protocol and scored with the same attacks, with the
published figures (RobustSSL_Benchmark, RobustBench) beside, and the pretrainings' device-hours."""
from __future__ import annotations

import pandas as pd

from advss import protocol as P
from advss.io import read_json
from advss.results import finetune_dir, finetune_result, pretrain_dir
from advss.tables import aggregate, autoattack_note, drop_empty, fmt, result_columns, seeds_phrase, write_table


def robust_ssl_jobs(spec: dict) -> list[tuple]:
    """(scenario, model label, key, src, ft): each task's (P3,F4), then each method × mode
    (the rule of workflow/rules/robust_ssl_inputs.smk, in the same order)."""
    rows = [("(P3,F4)", P.TASK_LABEL[t], t, P.pretrain_id(t, "P3"), P.finetune_id("F4")) for t in spec["tasks"]]
    for m in spec["robust_ssl_methods"]:
        p = P.SUCCESSOR_P[m]
        for f in spec["robust_ssl_finetune"]:
            rows.append((f"({p},{f})", P.SUCCESSOR_LABEL[m], m, m, P.finetune_id(f)))
    return rows


def pretrain_hours(run_dir, src, seed) -> float:
    """Training hours of a pretraining on its device (meta.json train_seconds, across resumes),
    every job the source stands on summed (DynACL++: DynACL's pretraining, its LP and AFT)."""
    return sum(read_json(pretrain_dir(run_dir, pt, seed) / "meta.json")["train_seconds"]
               for pt in P.pretrain_chain(src)) / 3600


def pretrain_bf16(run_dir, src, seed) -> bool:
    """Whether a pretraining (any job of its chain) ran its steps in bf16 autocast (meta.json's fast settings)."""
    return any(read_json(pretrain_dir(run_dir, pt, seed) / "meta.json").get("fast", {}).get("bf16")
               for pt in P.pretrain_chain(src))


def robust_ssl_frame(spec: dict) -> pd.DataFrame:
    rows = []
    for scen, label, key, src, ft in robust_ssl_jobs(spec):
        f = P.FT_TO_F[ft]
        for seed in spec["seeds"]:
            job = read_json(finetune_dir(spec["run_dir"], src, ft, seed) / "meta.json")["spec"]
            rows.append({"scenario": scen, "successor_name": P.SUCCESSOR_FT.get(f, ""), "model": label, "key": key,
                         "source": src, "fine_tuning": P.fine_tuning_label(job), "data_selection": P.data_selection(job),
                         "seed": seed, **finetune_result(spec["run_dir"], src, ft, seed),
                         "pretrain_hours": pretrain_hours(spec["run_dir"], src, seed),
                         "pretrain_bf16": pretrain_bf16(spec["run_dir"], src, seed)})
    return pd.DataFrame(rows)


def table_robust_ssl(spec: dict, prefix):
    frame = robust_ssl_frame(spec)
    agg = aggregate(frame, ["scenario", "successor_name", "model", "key", "source", "fine_tuning", "data_selection"],
                    ["ta", "ra", "ra_aa", "epochs", "pretrain_hours"])
    published = [P.PUBLISHED_ROBUST_SSL.get(k) if s == "(P3,F4)" else None for s, k in zip(agg["scenario"], agg["key"])]
    paper3 = [P.PAPER_TABLE3.get(k, {}).get("P3F4", (None, None, None)) for k in agg["key"]]
    agg["paper_ta"], agg["paper_ra"] = [v[0] for v in paper3], [v[1] for v in paper3]  # the 2020 paper's PGD-20
    agg["published_clean"] = [p[0] if p else None for p in published]
    agg["published_aa"] = [p[1] if p else None for p in published]
    agg["published_source"] = [f"{p[4]} ({p[2]})" if p else "" for p in published]
    trained = set(agg["key"][agg["scenario"] == "(P3,F4)"])
    extra = pd.DataFrame([{"scenario": "(P3,F4)", "successor_name": "AFF" if v[3] == "AFF" else "",
                           "model": f"{P.PUBLISHED_LABEL[k]} (published only)", "key": k, "source": "",
                           "published_clean": v[0], "published_aa": v[1], "published_source": f"{v[4]} ({v[2]})"}
                          for k, v in P.PUBLISHED_ROBUST_SSL.items() if k not in trained])
    agg = pd.concat([agg, extra], ignore_index=True)
    cols = result_columns(agg)
    display = pd.DataFrame({"Scenario": [f"{s} {n}".strip() for s, n in zip(agg["scenario"], agg["successor_name"].fillna(""))],
                            "Model": agg["model"], "Fine-tuning": agg["fine_tuning"].fillna(""),
                            "Data, selection": agg["data_selection"].fillna(""), **cols,
                            "Pretraining h": [fmt(m, s, 3) for m, s in zip(agg["pretrain_hours"], agg["pretrain_hours_std"])],
                            "Published clean": [fmt(v) for v in agg["published_clean"]],
                            "Published AutoAttack": [fmt(v) for v in agg["published_aa"]],
                            "Published source": agg["published_source"]})
    aa_note = autoattack_note(display, spec.get("autoattack_n"))
    agg = drop_empty(agg)
    n = int(agg["n_seeds"].min())
    bf16 = ("the pretrainings ran in bf16 autocast (meta.json), where ACL's and DynACL's code runs fp32"
            if frame["pretrain_bf16"].any() else "the pretrainings ran in fp32, as ACL's and DynACL's code")
    # The protocol sentence follows the rows' specs: robust-ssl.yaml runs RSB's, another config its own.
    successor = ~frame["key"].isin(P.TASKS)
    rsb = bool(successor.any()) and (frame.loc[successor, "data_selection"] == "all training images, last epoch").all()
    protocol = ("the contrastive rows as RobustSSL_Benchmark @319a200 runs them (SLF: CE on the linear head; ALF: "
                "PGD-10 cross-entropy AT; AFF: TRADES β = 6, for ACL and DynACL with dual BN, the clean input through "
                "the clean BN and the adversarial one through the adversarial BN, the adversarial copy evaluated; all "
                "training images, the last epoch, the head zeroed)" if rsb else
                "the contrastive rows as this config sets them, not as RobustSSL_Benchmark runs them (config/"
                "robust-ssl.yaml does: TRADES with dual BN for AFF, all training images, the last epoch)")
    caption = (f"Successors ({spec['run']}, {spec['arch']}): the 2020 pretext tasks' (P3,F4) beside the contrastive "
               f"family pretrained by the same loop: SimCLR (P2), ACL (DS, dual BN; P3), DynACL (ACL with its annealed "
               f"augmentation and momentum encoder; P3), DynACL++ where listed (DynACL's model post-processed as "
               f"PKU-ML/DYNACL @7d143db: k-means pseudo-labels on its features, linear probing then TRADES "
               f"fine-tuning on them; its hours sum the three jobs); fine-tuning by the successors' names SLF = F1 (partial ST), ALF = F2 (partial AT), "
               f"AFF = F4 (full AT). Each row's fine-tuning and its data and selection are read from the job's spec "
               f"(its columns): {protocol}; the 2020 tasks' rows on the 2020 split (fit / validation) with the best "
               f"validation RA. Test TA / RA (PGD-{spec['eval_steps']}, %), the epoch of the "
               f"model kept, the pretraining's training hours on its device (meta.json), {seeds_phrase(n)}. "
               f"'Paper TA/RA': the 2020 paper's (P3,F4), ResNet-50, PGD-20; 'Published': clean and AutoAttack RA of "
               f"the published models at ε = 8/255, with their sources (other architectures and budgets: read them as "
               f"context, not as a replication target at this config's scale). Kept differences from the reference "
               f"code: {bf16}; the augmentation runs on the device (crop by grid sampling, hue as a YIQ rotation, "
               f"not PIL's); every fine-tuning validates each epoch (RSB: none); single-BN TRADES (SimCLR's AFF, "
               f"DynACL++'s AFT on pseudo-labels) starts its attack from N(0, 0.001²) noise, where RSB's and "
               f"DynACL's trades_loss start at x itself, at which the KL's gradient is zero.{aa_note}")
    return write_table(display, agg, prefix, caption, spec["config_hash"])
