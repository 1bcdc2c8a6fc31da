"""`python -m advss.gpucheck`: every job kind for a few batches, with the default settings.

    python -m advss.gpucheck --out gpucheck.json          # on a GPU: CIFAR ResNet-50, fast: auto
    python -m advss.gpucheck --arch resnet-tiny --width 8 --batch 16 --fast '{"compile": true,
        "compile_backend": "aot_eager", "precision": "bf16", "cuda_graphs": true}'   # the CPU guard

Runs, on procedural 32-px images, the training kinds (pretraining of each task, standard
and adversarial; ensemble AP+SE and AP+DPE; random smoothing; the rotation-auxiliary
baseline; fine-tuning F1–F4 from each kind of source) through the one training loop
`advss.train.train`, and the evaluation kinds (evaluate, AutoAttack, unforeseen attacks,
corruptions, transfer, ensemble-eval) through the functions the workflow's jobs call.
Each training kind runs two epochs: the first warms up (compilation, graph capture); the
second is timed and must compile nothing new. Each evaluation kind runs twice; the
second run is timed. The suites' settings (attack iterations, corruptions) come from
--config (the demo's cheap settings by default); the pretext settings (Selfie's 12-layer
transformer) from --pretext-config (the paper's); model and threat are the paper's.
Prints one row per kind: ok or failed, seconds per batch after warm-up, recompiles.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
import traceback
from pathlib import Path

import yaml

from advss import protocol as P

ROOT = Path(__file__).resolve().parent.parent
PAPER_THREAT = {"norm": "linf", "eps": "8/255", "step": "2/255", "train_steps": 10, "eval_steps": 20,
                "random_start": True, "bn_mode_when_crafting": "train"}


def _finetunes():
    """(kind, source, F): every F from a single-task trunk; scratch for F3/F4; the partial
    modes (and F4) from the trunks that transfer stem..layer3 only."""
    out = [("scratch", "F3"), ("scratch", "F4")]
    out += [("rotation-adv", f) for f in ("F1", "F2", "F3", "F4")]
    out += [("selfie-adv", f) for f in ("F1", "F2", "F4")]
    out += [("ensemble-dpe", f) for f in ("F1", "F2", "F4")]
    out += [("acl", "F4")]  # from a dual-BN trunk, exported with one BN
    return out


PRETRAIN_KINDS = ["rotation-std", "rotation-adv", "jigsaw-std", "jigsaw-adv", "selfie-std", "selfie-adv",
                  "ensemble-se", "ensemble-dpe", "rotation-smooth", "rotaux", "simclr", "acl", "dynacl"]
EVAL_KINDS = ["evaluate", "autoattack", "unforeseen", "corruptions", "transfer", "ensemble-eval"]
FT_MODES = {"F1": (True, False), "F2": (True, True), "F3": (False, False), "F4": (False, True)}


def all_kinds():
    return PRETRAIN_KINDS + [f"finetune {s} {f}" for s, f in _finetunes()] + EVAL_KINDS


# ------------------------------------------------------------------ specs
def _threat(a):
    return {**PAPER_THREAT, "train_steps": a.train_steps, "eval_steps": a.eval_steps}


def _base(a, model, fast):
    return {"model": model, "threat": _threat(a), "seed": 0, "deterministic": False, "fast": fast,
            "epochs": 2, "batch_size": a.batch, "augment": True, "val_max": a.n_eval,
            "optim": {"lr": 0.01, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "constant"}}


def pretrain_spec(kind, a, cfg, model, fast):
    s = {**_base(a, model, fast), "stage": "pretrain", "select_by": "last"}
    pretext = cfg.get("pretext", {})
    if kind.startswith("ensemble"):
        members = ["rotation", "jigsaw", "selfie"]
        obj = {"kind": "ensemble", "alpha": 0.0 if kind == "ensemble-se" else 0.1, "sign": 1, "mix": "clean+adv"}
        return {**s, "task": "ensemble", "objective": obj, "eval_ra": True,
                "pretext": {"ensemble": {"members": members, "pretext": {t: pretext.get(t, {}) for t in members}}}}
    if kind in P.CONTRASTIVE:  # the successors: SimCLR, ACL (dual BN), DynACL (a new strength and
        # adversarial weight each epoch, so the captured step meets a changed weight tensor)
        opts = {**pretext.get("contrastive", {}), **({"reload_every": 1} if kind == "dynacl" else {})}
        lars = {"optim": {**s["optim"], "optimizer": "lars", "lars_eta": 0.001}} if kind != "simclr" else {}  # ACL's
        return {**s, **P.contrastive_spec(kind, opts), **lars}
    if kind == "rotaux":
        return {**s, "stage": "finetune", "task": "rotaux", "pretext": {"rotaux": {"rot_weight": 0.5}},
                "objective": {"kind": "adversarial", "mix": "adv"}, "eval_ra": True}
    task, mode = kind.split("-")
    obj = {"std": {"kind": "standard"}, "adv": {"kind": "adversarial", "mix": "clean+adv"},
           "smooth": {"kind": "smoothing", "sigma": 0.25}}[mode]
    return {**s, "task": task, "pretext": {task: pretext.get(task, {})}, "objective": obj, "eval_ra": mode == "adv"}


def finetune_spec(f, a, model, fast):
    partial, adv = FT_MODES[f]
    return {**_base(a, model, fast), "stage": "finetune", "task": "classification", "partial": partial,
            "objective": {"kind": "adversarial", "mix": "adv"} if adv else {"kind": "standard"},
            "eval_ra": True, "select_by": "val_ra" if adv else "val_ta"}


# ------------------------------------------------------------------ runs
def run_train(spec, data, work, name, init=None):
    from advss.fast import graphs_compiled
    from advss.train import path_fields, train

    marks, logs = [], []
    d = work / name.replace(" ", "_")
    train(spec, data, d / "model.pt", d / "metrics.csv", d / "meta.json", init=init, device=_DEVICE,
          log=logs.append, on_epoch=lambda row: marks.append(graphs_compiled()))
    meta = json.loads((d / "meta.json").read_text())
    return {"s_per_batch": meta["s_per_batch_after_warmup"][-1], "recompiles": graphs_compiled() - marks[0],
            **path_fields(meta), "log": [m for m in logs if "graph" in m or "compile" in m][:6], "model": d / "model.pt"}


def run_eval(kind, a, cfg, model_cfg, fast, data, work, models):
    """Twice: the first warms up, the second is timed and counts new graphs."""
    from advss.fast import graphs_compiled

    n, bs = a.n_eval, a.eval_batch
    common = {"model": model_cfg, "threat": _threat(a), "seed": 0, "deterministic": False,
              "n_examples": n, "batch_size": bs}
    rob = cfg.get("robustness", {})
    d = work / kind

    def once(i):
        out = d / str(i)
        if kind == "evaluate":
            from advss.evaluate import run
            return run({**common, "fast": fast}, data, models["F4"], out / "t.json", out / "t.npz", _DEVICE)
        if kind in ("autoattack", "unforeseen", "corruptions"):
            from advss.robustness import run
            part = {k: v for k, v in (rob.get(kind) or {}).items()
                    if k not in ("enabled", "scenarios", "ensembles", "n_examples")}
            spec = {**common, "subset_seed": 0, kind: part}
            return run(kind, spec, data, [models["F4"]], out / "r.json", out / "r.npz", _DEVICE)
        if kind == "transfer":
            from advss.transfer import run
            spec = {**common, "fast": fast, "source": "F4", "targets": ["F4", "F2"]}
            return run(spec, data, models["F4"], [models["F4"], models["F2"]], out / "t.npz", out / "t.json", _DEVICE)
        if kind == "ensemble-eval":
            from advss.ensemble_eval import run
            spec = {**common, "fast": fast, "members": ["F4", "F2"]}
            return run(spec, data, [models["F4"], models["F2"]], out / "e.json", out / "e.npz", _DEVICE)
        raise ValueError(kind)

    once(0)
    g0, t0 = graphs_compiled(), time.perf_counter()
    once(1)
    _sync()
    return {"s_per_batch": (time.perf_counter() - t0) / math.ceil(n / bs), "recompiles": graphs_compiled() - g0}


_DEVICE = "auto"


def _sync():
    import torch

    if torch.cuda.is_available() and _DEVICE != "cpu":
        torch.cuda.synchronize()


class DeadlineReached(BaseException):
    """Raised by the timer in whatever row is running: not an Exception, so no row's own
    error handling swallows it."""


class Record:
    """The JSON record of a check, rewritten (atomically) after every row, so that a run
    cut short still leaves valid JSON with every row measured so far; and a deadline:
    `start_row` says whether there is time for another row, and a timer stops the row
    in progress `margin` seconds before the deadline."""

    def __init__(self, out, header: dict, deadline_s: float | None = None, margin: float = 15.0):
        import signal

        self.out, self.rec, self.t0 = out, {**header, "rows": [], "complete": False}, time.monotonic()
        self.deadline = deadline_s
        self.rec["deadline_s"] = deadline_s
        if deadline_s:
            def stop(signum, frame):
                raise DeadlineReached(f"stopped {margin:g} s before the {deadline_s:g} s deadline")

            self.previous = signal.signal(signal.SIGALRM, stop)
            signal.setitimer(signal.ITIMER_REAL, max(1.0, deadline_s - margin))
        self.save()

    def left(self) -> float:
        return math.inf if not self.deadline else self.deadline - (time.monotonic() - self.t0)

    def add(self, row: dict):
        row.setdefault("at_s", round(time.monotonic() - self.t0, 1))
        self.rec["rows"].append(row)
        self.save()

    def save(self):
        if self.out:
            from advss.io import write_json

            write_json(self.out, self.rec)

    def finish(self, **fields):
        import signal

        if self.deadline:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)
        self.rec.update(fields, complete=not self.rec.get("stopped"))
        self.save()
        return self.rec


def timed_row(record: Record, name: str, fn, min_left: float = 20.0) -> dict | None:
    """Run one row unless the deadline is too near; a row that raises is a failed row; the
    deadline ends the row in progress and the check (recorded as 'stopped')."""
    if record.left() < min_left:
        record.rec.setdefault("stopped", f"deadline: {record.left():.0f} s left, rows from here skipped")
        record.add({"kind": name, "ok": False, "skipped": "deadline"})
        return None
    t = time.perf_counter()
    try:
        row = {"kind": name, "ok": True, **fn()}
    except DeadlineReached as e:
        record.rec["stopped"] = str(e)
        record.add({"kind": name, "ok": False, "error": f"deadline: {e}", "wall_s": round(time.perf_counter() - t, 1)})
        raise
    except Exception as e:  # noqa: BLE001 - a failing row is a row, not the end of the check
        row = {"kind": name, "ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    row["wall_s"] = round(time.perf_counter() - t, 1)
    record.add(row)
    return row


def parser():
    ap = argparse.ArgumentParser(prog="python -m advss.gpucheck", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "config" / "demo.yaml"), help="the suites' settings")
    ap.add_argument("--pretext-config", default=str(ROOT / "config" / "config.yaml"), help="the pretext settings")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128, help="training batch (the paper's)")
    ap.add_argument("--batches", type=int, default=6, help="training batches per epoch (+ a partial one, dropped)")
    ap.add_argument("--n-eval", type=int, default=128, help="validation and test images")
    ap.add_argument("--eval-batch", type=int, default=256)
    ap.add_argument("--train-steps", type=int, default=10, help="PGD steps in training (the paper's 10)")
    ap.add_argument("--eval-steps", type=int, default=20, help="PGD steps in evaluation (the paper's 20)")
    ap.add_argument("--fast", default="{}", help="JSON overrides of the fast settings (default: auto)")
    ap.add_argument("--kinds", nargs="*", help="only these kinds (default: all)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, help="seconds: stop (with a valid JSON) before this")
    ap.add_argument("--out", help="write the rows as JSON here (after every row)")
    return ap


class Checker:
    """Runs kinds for a record, keeping the checkpoints it trained, so that later calls
    (gpuquick interleaves benchmark rows between them) reuse their sources and models."""

    def __init__(self, a):
        global _DEVICE
        from advss.data import prepare
        from advss.io import pick_device

        self.a = a
        self.cfg = yaml.safe_load(Path(a.config).read_text())
        self.cfg["pretext"] = yaml.safe_load(Path(a.pretext_config).read_text()).get("pretext", {})
        self.fast = json.loads(a.fast)
        self.model = {"arch": a.arch, "width": a.width, "stem": "cifar"}
        _DEVICE = str(pick_device(a.device))
        self.work = Path(tempfile.mkdtemp(prefix="advss-gpucheck-"))
        self.data = self.work / "dataset.pt"
        n_fit = a.batch * a.batches + a.batch // 2 + 1          # a partial last batch, dropped by the loop
        per_class = math.ceil((n_fit + a.n_eval) / 10)
        prepare({"name": "procedural", "procedural": {"n_per_class": per_class,
                 "n_test_per_class": math.ceil(a.n_eval / 10), "seed": 0},
                 "val_fraction": a.n_eval / (10 * per_class), "split_seed": 0}, self.data)
        self.ckpt, self.models = {}, {}
        print(f"{'job kind':<32}{'result':<8}{'s/batch':>9}{'recompiles':>12}{'wall s':>8}  path", flush=True)

    def plan(self, kinds):
        """`kinds` in their order, each after the models it needs (its pretraining; for an
        evaluation, the rotation-adv F2/F4 models unless an F4 model exists)."""
        out = []
        for k in kinds:
            deps = []
            if k.startswith("finetune") and k.split()[1] != "scratch":
                deps = [k.split()[1]]
            if k in EVAL_KINDS and "F4" not in self.models and not any(x.startswith("finetune") for x in out + kinds):
                deps = ["rotation-adv", "finetune rotation-adv F2", "finetune rotation-adv F4"]
            out += [d for d in deps if d not in out and d not in self.ckpt] + ([k] if k not in out else [])
        return out

    def one(self, kind):
        a, cfg, model, fast = self.a, self.cfg, self.model, self.fast
        if kind in PRETRAIN_KINDS:
            r = run_train(pretrain_spec(kind, a, cfg, model, fast), self.data, self.work, kind)
            self.ckpt[kind] = r.pop("model")
        elif kind.startswith("finetune"):
            _, src, f = kind.split()
            init = None if src == "scratch" else self.ckpt.get(src)
            if src != "scratch" and init is None:
                raise RuntimeError(f"its source {src} did not train")
            r = run_train(finetune_spec(f, a, model, fast), self.data, self.work, kind, init=init)
            path = r.pop("model")
            if src == "rotation-adv" or f not in self.models:  # the evaluations' models
                self.models[f] = path
        else:
            r = run_eval(kind, a, cfg, model, fast, self.data, self.work, self.models)
        if not r.get("path_ok", True):
            raise RuntimeError(f"graphs {r['graphs_requested']} requested, but the step ran: {r['step_path']}")
        return r

    def run(self, record: Record, kinds):
        """One row per asked kind; the models they need train without a row of their own."""
        for kind in self.plan(kinds):
            if kind not in kinds:
                try:
                    self.one(kind)
                except Exception:  # noqa: BLE001 - the kinds that need it fail with their own row
                    pass
                continue
            row = timed_row(record, kind, lambda: self.one(kind))
            if row is None:
                continue
            res = "ok" if row["ok"] else "FAILED"
            spb = f"{row['s_per_batch']:.4f}" if row["ok"] and row.get("s_per_batch") else "-"
            rec = str(row["recompiles"]) if row["ok"] else "-"
            print(f"{kind:<32}{res:<8}{spb:>9}{rec:>12}{row['wall_s']:>8}  {row.get('step_path', '')}", flush=True)
            if not row["ok"]:
                print("    " + row["error"][:300], flush=True)


def header(a, name, torch) -> dict:
    return {"device": name, "torch": torch.__version__, "arch": a.arch, "width": a.width, "batch": a.batch,
            "fast": json.loads(a.fast) or "auto", "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def summarise(record: Record) -> dict:
    rows = [r for r in record.rec["rows"] if "kind" in r]
    ok = all(r["ok"] for r in rows) and all(r.get("recompiles", 0) == 0 for r in rows if r["ok"])
    print(f"{sum(r['ok'] for r in rows)}/{len(rows)} rows ok; "
          f"{sum(r.get('recompiles', 0) for r in rows if r['ok'])} recompiles after warm-up"
          + (f"; {record.rec['stopped']}" if record.rec.get("stopped") else ""), flush=True)
    return record.finish(all_ok=ok and not record.rec.get("stopped"))


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    import torch

    from advss.io import pick_device

    kinds = a.kinds or all_kinds()
    unknown = set(kinds) - set(all_kinds())
    if unknown:
        ap.error(f"unknown kinds {sorted(unknown)}; choose from {all_kinds()}")
    dev = pick_device(a.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"gpucheck on {name}, torch {torch.__version__}, {a.arch} (width {a.width}), batch {a.batch}, "
          f"fast {json.loads(a.fast) or 'auto'}", flush=True)
    record = Record(a.out, header(a, name, torch), a.deadline)
    try:
        Checker(a).run(record, kinds)
    except DeadlineReached:
        pass
    return summarise(record)


if __name__ == "__main__":
    raise SystemExit(0 if main()["all_ok"] else 1)
