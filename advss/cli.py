"""`python -m advss <command>`: all argument parsing; each command is one call of a
job module's function (imported only when its command runs, so `--help` and argument
errors stay fast).

Every workflow job is one such line, so a person can copy it from a log and run it.
The job's result-affecting settings arrive as one JSON `--spec`; paths as flags.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from advss.protocol import ROBUSTNESS_SUITES


def _spec(s: str) -> dict:
    text = Path(s[1:]).read_text() if s.startswith("@") else s
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"--spec is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return spec


def common_args(p, data=True):
    p.add_argument("--spec", type=_spec, required=True, help="job spec as JSON (or @file.json)")
    if data:
        p.add_argument("--data", required=True, help="dataset file written by `advss prepare`")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="advss", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("prepare", help="build a dataset file (uint8 tensors + seeded split)")
    p.add_argument("--spec", type=_spec, required=True)
    p.add_argument("--out", required=True)

    for name in ("pretrain", "finetune"):
        p = sub.add_parser(name, help=f"{name} a model with the one training loop")
        common_args(p)
        p.add_argument("--init", help="pretrained checkpoint whose trunk starts the model")
        p.add_argument("--out-model", required=True)
        p.add_argument("--out-metrics", required=True)
        p.add_argument("--out-meta", required=True)
        p.add_argument("--out-best-ta", help="also save the best-validation-TA checkpoint here")
        p.add_argument("--resume-dir", help="per-epoch resume state (not a workflow output)")
        p.add_argument("--labels", help="pseudo-labels replacing the training labels (`advss pseudolabel`'s file)")

    p = sub.add_parser("pseudolabel", help="pseudo-labels by k-means on a pretrained model's features (DynACL++)")
    common_args(p)
    p.add_argument("--model", required=True, help="the pretrained checkpoint whose features are clustered")
    p.add_argument("--out", required=True, help="the labels file (torch)")
    p.add_argument("--out-json", required=True, help="a summary: cluster sizes, inertia, purity against true labels")

    p = sub.add_parser("evaluate", help="test TA / PGD RA and per-example vectors of a checkpoint")
    common_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)

    p = sub.add_parser("transfer", help="PGD crafted on one model, evaluated on others (Table 4, Figure 5)")
    common_args(p)
    p.add_argument("--source", required=True, help="checkpoint the attack is crafted on")
    p.add_argument("--targets", nargs="+", required=True, help="checkpoints evaluated, in the order of spec['targets']")
    p.add_argument("--out-npz", required=True)
    p.add_argument("--out-json", required=True)

    p = sub.add_parser("ensemble-eval", help="a softmax-average ensemble's TA and white-box PGD RA (Table 6)")
    common_args(p)
    p.add_argument("--models", nargs="+", required=True, help="the members' checkpoints")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)

    p = sub.add_parser("robustness", help="AutoAttack, unforeseen attacks or CIFAR-10-C of a model or an ensemble")
    p.add_argument("suite", choices=ROBUSTNESS_SUITES)
    common_args(p)
    p.add_argument("--model", action="append", required=True,
                   help="fine-tuned checkpoint; repeat it to attack the softmax average of several")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npz", required=True)

    p = sub.add_parser("card", help="a RobustBench-style model card and a plain-PyTorch program of a classifier")
    common_args(p)
    p.add_argument("--model", required=True)
    p.add_argument("--test-json", required=True, help="the model's test.json (advss evaluate)")
    p.add_argument("--autoattack-json", default=None, help="its eval/autoattack.json, where AutoAttack ran")
    p.add_argument("--out-card", required=True)
    p.add_argument("--out-program", required=True, help="the torch.export program (.pt2)")

    p = sub.add_parser("pool", help="write an unlabeled pretraining pool file (Table 7)")
    common_args(p)  # --spec: the ablations.pool section; --data: the run's dataset file
    p.add_argument("--size", type=int, required=True, help="number of pool images")
    p.add_argument("--out", required=True)

    for name in ("table", "figure"):
        p = sub.add_parser(name, help=f"make one {name} from result files")
        p.add_argument("name")
        p.add_argument("--spec", type=_spec, required=True)
        p.add_argument("--out", required=True, help="output path; its extension is replaced per format")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    from advss.io import AdvssError

    try:
        if getattr(args, "threads", 0):
            import torch

            torch.set_num_threads(args.threads)
        _dispatch(args)
    except (AdvssError, ValueError, KeyError) as e:
        msg = f"missing key {e}" if isinstance(e, KeyError) else str(e)
        print(f"advss {args.cmd}: error: {msg}", file=sys.stderr)
        sys.exit(2)


def _dispatch(args):
    if args.cmd == "prepare":
        from advss.data import prepare

        prepare(args.spec, args.out)
    elif args.cmd in ("pretrain", "finetune"):
        from advss.train import train

        train({**args.spec, "stage": args.cmd}, args.data, args.out_model, args.out_metrics, args.out_meta,
              init=args.init, out_best_ta=args.out_best_ta, resume_dir=args.resume_dir, device=args.device,
              log=lambda m: print(m, flush=True), labels=args.labels)
    elif args.cmd == "pseudolabel":
        from advss.pseudolabel import run

        print(json.dumps(run(args.spec, args.data, args.model, args.out, args.out_json, args.device)))
    elif args.cmd == "evaluate":
        from advss.evaluate import run

        print(json.dumps(run(args.spec, args.data, args.model, args.out_json, args.out_npz, args.device)))
    elif args.cmd == "transfer":
        from advss.transfer import run

        print(json.dumps(run(args.spec, args.data, args.source, args.targets, args.out_npz, args.out_json, args.device)))
    elif args.cmd == "ensemble-eval":
        from advss.ensemble_eval import run

        print(json.dumps(run(args.spec, args.data, args.models, args.out_json, args.out_npz, args.device)))
    elif args.cmd == "robustness":
        from advss.robustness import run

        res = run(args.suite, args.spec, args.data, args.model, args.out_json, args.out_npz, args.device)
        print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}))
    elif args.cmd == "card":
        from advss.cards import run

        card = run(args.spec, args.data, args.model, args.test_json, args.autoattack_json, args.out_card,
                   args.out_program, args.device)
        print(json.dumps({k: card[k] for k in ("name", "clean_acc", "autoattack_acc")}))
    elif args.cmd == "pool":
        from advss.ablations import build_pool

        build_pool(args.spec, args.size, args.data, args.out)
    else:
        from advss.report import make

        make(args.name, args.spec, Path(args.out).with_suffix(""))
