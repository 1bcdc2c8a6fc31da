"""The one training loop: pretraining (P2/P3, any task) and fine-tuning (F1–F4).

Resumable at batch granularity: every batch draws its randomness from a generator
seeded by (seed, epoch, batch), and `last.pt` in the resume directory (never a
declared workflow output) holds weights, optimiser and history after each epoch,
or mid-epoch when SIGTERM/SIGUSR1 (SLURM's warning) arrives. A resumed run thus
ends with exactly the metrics of an uninterrupted one in deterministic mode.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io as _io
import math
import signal
import sys
import time
from pathlib import Path

import torch

from advss import data as D
from advss.attacks import Threat, pgd
from advss.io import (AdvssError, batch_seed, exclusive_lock, generator, pick_device, provenance, set_deterministic,
                      spec_hash, torch_load, torch_save, write_json, write_text)
from advss.models import Model, build_trunk, load_checkpoint, load_trunk, save_checkpoint
from advss.objectives import OBJECTIVES, needs_double_backward
from advss.pretext import build_task
from advss.step import StepRunner, init_momentum, train_step

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_ta", "val_ra", "seconds"]


# ------------------------------------------------------------------ schedules
def lr_at(optim: dict, epoch: int, step: int, steps_per_epoch: int, epochs: int) -> float:
    """Learning rate at a global step. Every schedule starts with a linear warm-up
    from warmup_lr over warmup_steps when warmup_steps > 0 (the reference fine-tuning
    warms up from 0.01 to 0.1 over 200 steps); then 'step': ×gamma at each milestone
    epoch; 'cosine': cosine to 0 over the remaining steps; 'constant'."""
    lr = float(optim["lr"])
    sched = optim.get("schedule", "step")
    warm = int(optim.get("warmup_steps", 0))
    if sched not in ("step", "cosine", "constant"):
        raise ValueError(f"unknown lr schedule {sched!r}")
    if step < warm:
        w0 = float(optim.get("warmup_lr", lr * 0.1))
        return w0 + (lr - w0) * step / warm
    if sched == "step":
        return lr * optim.get("gamma", 0.1) ** sum(epoch >= m for m in optim.get("milestones", []))
    if sched == "cosine":
        total = max(1, epochs * steps_per_epoch - warm)
        return 0.5 * lr * (1 + math.cos(math.pi * min(1.0, (step - warm) / total)))
    return lr


# ----------------------------------------------------------------- fast path
def fast_settings(spec: dict, dev) -> dict:
    """bf16 autocast, channels-last, torch.compile and CUDA graphs: 'auto' turns each on
    for CUDA only (on a CPU they cost more than they give); true/false force it.
    'graphs' is 'cuda', 'fake' (a CPU stand-in that tests the plumbing) or 'off'."""
    f = spec.get("fast", {}) or {}
    cuda = getattr(dev, "type", str(dev)) == "cuda"
    pick = lambda key: cuda if f.get(key, "auto") == "auto" else bool(f[key])  # noqa: E731
    prec = f.get("precision", "auto")
    bf16 = cuda if prec == "auto" else prec == "bf16"
    graphs = f.get("cuda_graphs", "auto")
    graphs = ("cuda" if cuda else "off") if graphs == "auto" else ("cuda" if cuda else "fake") if graphs is True else "off"
    return {"bf16": bf16, "channels_last": pick("channels_last"), "compile": pick("compile"),
            "compile_backend": f.get("compile_backend", "inductor"), "graphs": graphs}


def autocast(dev, on: bool):
    return torch.autocast(device_type=getattr(dev, "type", str(dev)), dtype=torch.bfloat16, enabled=on)


def _raise_recompile_limit(n: int = 64):
    """One trunk forward meets several static variants (train/eval BN, crafting with BN
    momentum 0, inputs with/without grad, Selfie's patch shapes): let them all stay cached."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name) and getattr(dc, name) < n:
            setattr(dc, name, n)


class _TrainEvalCompiled:
    """Stands in for `trunk.forward`: one compiled callable for training mode and one for
    eval mode, both with static shapes (`dynamic=False`), so that switching to
    validation and back never throws away or re-specialises the other's graphs."""

    def __init__(self, module, backend):
        _raise_recompile_limit()
        fn = module.forward
        self.module = module
        self.train_fn = torch.compile(fn, dynamic=False, backend=backend)
        self.eval_fn = torch.compile(fn, dynamic=False, backend=backend)

    def __call__(self, *args, **kwargs):
        return (self.train_fn if self.module.training else self.eval_fn)(*args, **kwargs)


def apply_fast(model, dev, fast: dict, log=None):
    """Move to the device; compile the trunk's forward in place so state_dict keys stay plain."""
    model.to(dev, memory_format=torch.channels_last if fast["channels_last"] else torch.contiguous_format)
    if fast["compile"]:
        model.trunk.forward = _TrainEvalCompiled(model.trunk, fast.get("compile_backend", "inductor"))
    if dev.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
    return model


def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process (a new one after warm-up is a recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# ----------------------------------------------------------------- evaluation
def evaluate(model, task, x, y, threat: Threat | None, batch_size: int, seed: int = 0, bf16: bool = False):
    """Clean and (optionally) PGD correctness per example, model in eval mode.
    Returns dict of float tensors: clean, adv (or None), pred_clean, pred_adv.
    The last batch is padded to `batch_size` (results of the padding dropped), so a
    compiled model sees one shape; in eval mode examples do not interact."""
    with autocast(x.device, bf16):
        return _evaluate(model, task, x, y, threat, batch_size, seed)


def _pad(t, n):
    """t with its first rows repeated until it has n rows."""
    if len(t) == n:
        return t
    reps = -(-n // len(t))
    return torch.cat([t] * reps)[:n]


def _evaluate(model, task, x, y, threat, batch_size, seed):
    was = model.training
    model.eval()
    clean, adv, pc, pa = [], [], [], []
    batch_size = min(batch_size, len(x))
    for b, i in enumerate(range(0, len(x), batch_size)):
        gen = generator(batch_seed(seed, -1, b), x.device)
        n = len(x[i:i + batch_size])
        xb = _pad(x[i:i + batch_size], batch_size)
        yb = _pad(y[i:i + batch_size], batch_size)
        xb = D.to_float(xb) if xb.dtype == torch.uint8 else xb
        inputs, targets = task.make_batch(xb, yb, gen)
        with torch.no_grad():
            _, logits = task.loss(model, inputs, targets)
        clean.append(task.correct(logits, targets)[:n].float())
        pc.append(logits.argmax(-1)[:n])
        if threat is not None:
            x_adv = pgd(lambda z: task.loss(model, z, targets)[0], inputs, threat, gen)
            with torch.no_grad():
                _, logits_adv = task.loss(model, x_adv, targets)
            adv.append(task.correct(logits_adv, targets)[:n].float())
            pa.append(logits_adv.argmax(-1)[:n])
    model.train(was)
    cat = lambda v: torch.cat(v).cpu() if v else None  # noqa: E731
    return {"clean": cat(clean), "adv": cat(adv), "pred_clean": cat(pc), "pred_adv": cat(pa)}


# ----------------------------------------------------------------- the loop
class _Stop:
    """SIGTERM / SIGUSR1 ask the loop to save and exit at the next batch boundary."""

    def __init__(self):
        self.requested = None
        for s in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.requested = signal.Signals(signum).name


def _set_mode(model: Model, frozen: tuple):
    """Train mode, except the frozen (transferred) part of a partial fine-tuning, whose
    BatchNorm keeps the pretrained statistics."""
    model.train()
    if frozen:
        for name, m in model.named_modules():
            if name and (name + ".").startswith(frozen):
                m.eval()


def freeze_transferred(model: Model, prefixes) -> tuple:
    """Partial fine-tuning (F1/F2): freeze exactly what the pretraining trained and
    transferred (θp); the rest of the trunk (Selfie's and the ensemble's layer4, which
    they never train) trains with the head (θf). Returns the frozen prefixes."""
    prefixes = tuple(p for p in prefixes if p.startswith("trunk."))
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
    return prefixes


def _rows_to_csv(rows) -> str:
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def build(spec: dict, num_classes: int, task_state=None):
    task = build_task(spec["task"], spec.get("pretext", {}), num_classes, state=task_state)
    trunk = build_trunk(spec["model"])
    return Model(trunk, task.build_head(trunk)), task


def _new_state():
    return {"epoch": 0, "batch": 0, "rows": [], "run": {"loss": 0.0, "correct": 0.0, "n": 0, "seconds": 0.0},
            "best_ra": -1.0, "best_ta": -1.0, "best_ra_epoch": 0, "best_ta_epoch": 0,
            "best_ra_state": None, "best_ta_state": None}


def train(spec: dict, data_path, out_model, out_metrics, out_meta, init=None, out_best_ta=None,
          resume_dir=None, device="auto", log=print, on_epoch=None):
    """Train one model as `spec` says and write its checkpoint, metrics and meta.
    `on_epoch(row)` is called after each epoch (benchmarks and gpucheck use it)."""
    started = time.time()
    stage = spec["stage"]
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    torch.manual_seed(spec["seed"])
    data = D.load(data_path, dev)
    model, task = build(spec, data["num_classes"])
    transfer, frozen = None, ()
    partial = bool(spec.get("partial", False))
    if partial and not init:
        raise AdvssError("partial fine-tuning (F1/F2) needs a pretrained model (--init)")
    if init:
        ck = load_checkpoint(init, spec["model"])
        prefixes = ck.get("transfer_prefixes", ["trunk."])
        transfer = load_trunk(model, ck, prefixes, init)
        log(f"loaded {transfer['loaded']} pretrained trunk tensors from {init}; "
            f"{len(transfer['kept_at_init'])} kept at init")
        if partial:
            frozen = freeze_transferred(model, prefixes)
            transfer["frozen_prefixes"] = list(frozen)
    obj = spec["objective"]
    fast = fast_settings(spec, dev)
    if fast["compile"] and needs_double_backward(obj):
        fast["compile"] = False
        log("torch.compile is off for this job: its objective differentiates twice (AP+DPE's log-det "
            "regulariser), which compiled graphs do not support")
    apply_fast(model, dev, fast)
    params = [p for p in model.parameters() if p.requires_grad]
    o = spec["optim"]
    opt = torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o.get("momentum", 0.9)),
                          weight_decay=float(o.get("weight_decay", 0.0)), nesterov=bool(o.get("nesterov", False)))
    init_momentum(opt)
    objective = OBJECTIVES[obj["kind"]]
    threat_cfg = spec.get("threat")
    train_threat = Threat.from_cfg(threat_cfg, "train_steps") if threat_cfg else None
    eval_threat = Threat.from_cfg(threat_cfg, "eval_steps") if threat_cfg and spec.get("eval_ra", True) else None
    if obj["kind"] in ("adversarial", "trades") and train_threat is None:
        raise AdvssError(f"objective {obj['kind']!r} needs a threat model in the spec")

    fx, fy = data["fit"]
    vx, vy = data["val"]
    if spec.get("val_max"):
        vx, vy = vx[: spec["val_max"]], vy[: spec["val_max"]]
    bs, epochs, seed = int(spec["batch_size"]), int(spec["epochs"]), int(spec["seed"])
    if len(fx) < bs:
        log(f"only {len(fx)} training examples for batch size {bs}: one batch of {len(fx)} per epoch")
        bs = len(fx)
    # Static shapes: the last partial batch is dropped (a fresh shuffle each epoch, so every
    # example is still seen), not padded: padding would repeat examples within a step and
    # weight them twice; a new shape would make torch.compile and the CUDA graph start over.
    steps_per_epoch = len(fx) // bs
    h = spec_hash(spec)
    step_fn = functools.partial(train_step, model, task, objective, obj, train_threat, opt, fast["bf16"])
    runner = StepRunner(step_fn, dev, fast["graphs"], log=log)
    log(f"fast path: bf16 {fast['bf16']}, channels-last {fast['channels_last']}, compile {fast['compile']}, "
        f"graphs {fast['graphs']}; {steps_per_epoch} batches of {bs} per epoch"
        + (f" ({len(fx) - steps_per_epoch * bs} left over each epoch)" if len(fx) % bs else ""))

    # ---- resume
    state = _new_state()
    resume_file = Path(resume_dir) / "last.pt" if resume_dir else None
    lock = exclusive_lock(resume_dir) if resume_dir else contextlib.nullcontext()
    with lock:
        if resume_file and resume_file.exists():
            r = torch_load(resume_file, "resume checkpoint")
            if r.get("spec_hash") != h:
                raise AdvssError(f"resume file {resume_file} belongs to a different job spec "
                                 f"({r.get('spec_hash')} != {h}); delete it to start over")
            model.load_state_dict(r["model"])
            opt.load_state_dict(r["optim"])
            init_momentum(opt)
            state = r["state"]
            log(f"resuming from {resume_file}: epoch {state['epoch'] + 1}, batch {state['batch']}")

        def save_resume():
            torch_save(resume_file, {"spec_hash": h, "model": model.state_dict(), "optim": opt.state_dict(),
                                     "state": state})

        stop = _Stop()
        select = spec.get("select_by", "val_ra" if eval_threat else "val_ta")
        bar = sys.stdout.isatty()  # a live bar in a terminal only; SLURM and Snakemake logs get epoch lines
        while state["epoch"] < epochs:
            epoch = state["epoch"]
            t0 = time.time()
            _set_mode(model, frozen)
            order = torch.randperm(len(fx), generator=generator(batch_seed(seed, epoch, -1), dev), device=dev)
            run = state["run"]
            loss_acc = torch.zeros((), device=dev, dtype=torch.float64)  # on the device: no host sync per batch;
            # float64 so that a resumed epoch (summed in two parts) rounds like an uninterrupted one
            correct_acc = torch.zeros((), device=dev, dtype=torch.float64)
            for b in range(state["batch"], steps_per_epoch):
                lr = lr_at(o, epoch, epoch * steps_per_epoch + b, steps_per_epoch, epochs)
                for g in opt.param_groups:
                    g["lr"] = lr
                gen = generator(batch_seed(seed, epoch, b), dev)
                torch.manual_seed(batch_seed(seed, epoch, b))  # dropout draws (Selfie's transformer)
                idx = order[b * bs:(b + 1) * bs]
                xb = D.augment(D.to_float(fx[idx]), gen) if spec.get("augment", True) else D.to_float(fx[idx])
                inputs, targets = task.make_batch(xb, fy[idx], gen)
                loss, logits = runner(inputs, targets, gen, lr)
                loss_acc += loss * bs
                correct_acc += task.correct(logits, targets).float().sum()
                run["n"] += bs
                state["batch"] = b + 1
                if bar:
                    _live_bar(epoch, epochs, b + 1, steps_per_epoch, time.time() - t0)
                if (b + 1) % 50 == 0 or b + 1 == steps_per_epoch or stop.requested:
                    run["loss"] += float(loss_acc)
                    run["correct"] += float(correct_acc)
                    loss_acc.zero_()
                    correct_acc.zero_()
                    if not math.isfinite(run["loss"]):
                        raise AdvssError(f"loss is {run['loss']} at epoch {epoch + 1}, batch {b + 1}: training "
                                         f"diverged (lr {lr:g}); stopping instead of saving a broken model")
                if stop.requested and b + 1 < steps_per_epoch:
                    run["seconds"] += time.time() - t0
                    if resume_file:
                        save_resume()
                        log(f"received {stop.requested}: saved {resume_file} at epoch {epoch + 1} batch {b + 1}; exiting")
                    sys.exit(143)
            seconds = run["seconds"] + time.time() - t0
            t_eval = time.time()
            # per-epoch validation keeps the training precision (it only selects a checkpoint);
            # the reported test numbers are computed in fp32 (advss.evaluate)
            ev = evaluate(model, task, vx, vy, eval_threat, max(bs, 256), seed, fast["bf16"])
            row = {"epoch": epoch + 1, "lr": round(lr, 8), "train_loss": round(run["loss"] / max(run["n"], 1), 6),
                   "train_acc": round(run["correct"] / max(run["n"], 1), 6),
                   "val_ta": round(float(ev["clean"].mean()), 6),
                   "val_ra": round(float(ev["adv"].mean()), 6) if ev["adv"] is not None else "",
                   "seconds": round(seconds, 2)}
            state["rows"].append(row)
            sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if row["val_ta"] > state["best_ta"]:
                state.update(best_ta=row["val_ta"], best_ta_epoch=epoch + 1, best_ta_state=sd)
            if row["val_ra"] != "" and row["val_ra"] > state["best_ra"]:
                state.update(best_ra=row["val_ra"], best_ra_epoch=epoch + 1, best_ra_state=sd)
            state.update(epoch=epoch + 1, batch=0, run={"loss": 0.0, "correct": 0.0, "n": 0, "seconds": 0.0})
            eta = (seconds + time.time() - t_eval) * (epochs - epoch - 1)  # training + validation per epoch
            if bar:
                sys.stdout.write("\r\x1b[K")  # erase the bar before the permanent line
            log(_epoch_line(row, epochs, eta))
            if on_epoch:
                on_epoch(row)
            if resume_file:
                save_resume()
            if stop.requested:
                log(f"received {stop.requested}: epoch {epoch + 1} saved in {resume_file}; exiting")
                sys.exit(143)

        final = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        chosen = {"val_ra": state["best_ra_state"], "val_ta": state["best_ta_state"], "last": final}[select]
        if chosen is None:
            raise AdvssError(f"select_by={select!r} but no such metric was recorded")
        extra = {"task": spec["task"], "task_state": task.state(), "transfer_prefixes": list(task.transfer_prefixes),
                 "spec_hash": h}
        model.load_state_dict(chosen)
        save_checkpoint(out_model, task.export(model), spec["model"], **extra)
        if out_best_ta:
            model.load_state_dict(state["best_ta_state"])
            save_checkpoint(out_best_ta, task.export(model), spec["model"], **extra)
        write_text(out_metrics, _rows_to_csv(state["rows"]))
        write_json(out_meta, provenance(
            spec, dev, started, stage=stage, epochs_run=len(state["rows"]), select_by=select,
            train_seconds=round(sum(r["seconds"] for r in state["rows"]), 2),  # across resumes
            best_ra=state["best_ra"], best_ra_epoch=state["best_ra_epoch"],
            best_ta=state["best_ta"], best_ta_epoch=state["best_ta_epoch"],
            epochs_to_best=state["best_ra_epoch"] if select == "val_ra" else state["best_ta_epoch"],
            transfer=transfer, fast={k: v for k, v in fast.items()}, batches_per_epoch=steps_per_epoch,
            val_precision="bf16" if fast["bf16"] else "fp32"))
        if resume_file and resume_file.exists():
            resume_file.unlink()
    return state


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _epoch_line(row, epochs, eta):
    """One fixed-width line per epoch, starting with the wall-clock time, so that a
    SLURM log file reads as a table (airbench's print_columns)."""
    ra = "  n/a" if row["val_ra"] == "" else f"{row['val_ra']:.3f}"
    return (f"{time.strftime('%H:%M:%S')}  epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:<9.4g} "
            f"loss {row['train_loss']:<8.4f} acc {row['train_acc']:.3f}  val TA {row['val_ta']:.3f}  val RA {ra}  "
            f"{row['seconds']:6.1f}s  ETA {_hms(eta)}")


def _live_bar(epoch, epochs, done, steps, elapsed, width=30):
    """Overwrite one terminal line with the progress of the current epoch (TTY only)."""
    fill = int(width * done / steps)
    eta = elapsed / done * (steps - done)
    sys.stdout.write(f"\repoch {epoch + 1}/{epochs} [{'#' * fill}{'.' * (width - fill)}] {done}/{steps} "
                     f"batches  {elapsed:5.1f}s  epoch ETA {_hms(eta)}")
    sys.stdout.flush()
