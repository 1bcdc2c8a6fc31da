"""`python -m advss rotaux`: train the one-shot baseline (AT + rotation auxiliary,
Hendrycks et al. 2019; the task is in advss/rotaux.py) with the one training loop, then
keep only the classification part of the checkpoints, so that they load in
`advss.evaluate.load_classifier` and are evaluated like any fine-tuned model.
Torch is imported inside `main`, so `python -m advss --help` stays fast.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


def add_arguments(p):
    from advss.cli import common_args

    common_args(p)
    p.add_argument("--out-model", required=True, help="best-RA checkpoint, classification part only")
    p.add_argument("--out-best-ta", required=True, help="best-TA checkpoint, classification part only")
    p.add_argument("--out-metrics", required=True)
    p.add_argument("--out-meta", required=True)
    p.add_argument("--resume-dir", help="per-epoch resume state (not a workflow output)")


def main(args):
    """Train with the one loop (task 'rotaux'), then strip the rotation head."""
    from advss.rotaux import classifier_checkpoint
    from advss.train import train

    out_model = Path(args.out_model)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".rotaux.", dir=out_model.parent) as tmp:
        full, full_ta = Path(tmp) / "model.pt", Path(tmp) / "best_ta.pt"
        train({**args.spec, "stage": "finetune"}, args.data, full, args.out_metrics, args.out_meta,
              out_best_ta=full_ta, resume_dir=args.resume_dir, device=args.device,
              log=lambda m: print(m, flush=True))
        classifier_checkpoint(full_ta, args.out_best_ta)
        classifier_checkpoint(full, out_model)
