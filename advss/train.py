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
import dataclasses
import functools
import io as _io
import math
import signal
import sys
import time
from pathlib import Path

import torch

from advss import data as D
from advss.attacks import Threat
from advss.evaluate import evaluate
from advss.fast import apply_fast, fast_settings
from advss.io import (AdvssError, batch_seed, exclusive_lock, generator, pick_device, provenance, set_deterministic,
                      spec_hash, torch_load, torch_save, write_json, write_text)
from advss.models import Model, init_weights, load_checkpoint, load_trunk, save_checkpoint, zero_head
from advss.objectives import OBJECTIVES, attention_kernel, needs_double_backward
from advss.pretext import build
from advss.dualbn import adv_copy, dual_bn_finetune
from advss.pseudolabel import carried_bn_copies, relabel
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


PARTIAL_TRAINS = ("untransferred", "head")  # config finetune.partial_trains


def freeze_transferred(model: Model, prefixes, trains: str = "untransferred") -> tuple:
    """Partial fine-tuning (F1/F2). 'untransferred', the paper's θp fixed / θf trained:
    freeze exactly what the pretraining trained and transferred; the rest of the trunk
    (Selfie's and the ensemble's layer4, which they never train) trains with the head.
    'head': freeze the whole trunk, so that F1/F2 train the same linear head after every
    pretext. Returns the frozen prefixes (BN there stays in eval mode, `_set_mode`)."""
    prefixes = ("trunk.",) if trains == "head" else tuple(p for p in prefixes if p.startswith("trunk."))
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


def _fresh_run() -> dict:
    return {"loss": 0.0, "correct": 0.0, "n": 0, "seconds": 0.0}


@dataclasses.dataclass
class LoopState:
    """Where the loop stands: the position, the epoch's running sums, the history and
    the best checkpoints so far. Saved as the "state" dict of last.pt (`as_dict`)."""

    epoch: int = 0
    batch: int = 0
    rows: list = dataclasses.field(default_factory=list)
    run: dict = dataclasses.field(default_factory=_fresh_run)
    best_ra: float = -1.0
    best_ta: float = -1.0
    best_ra_epoch: int = 0
    best_ta_epoch: int = 0
    best_ra_state: dict | None = None
    best_ta_state: dict | None = None
    s_per_batch: list = dataclasses.field(default_factory=list)  # per epoch, after warm-up/capture

    def as_dict(self) -> dict:
        """A plain dict of the same objects (no copies), loadable with weights_only."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass
class Job:
    """Everything fixed before the first batch: the model, optimiser and step runner,
    the data splits and the numbers the loop needs."""

    spec: dict
    stage: str
    started: float
    dev: torch.device
    model: Model
    task: object
    opt: torch.optim.Optimizer
    runner: StepRunner
    fast: dict
    fast_requested: dict
    frozen: tuple
    transfer: dict | None
    fit: tuple
    val: tuple
    eval_threat: Threat | None
    bs: int
    epochs: int
    seed: int
    steps_per_epoch: int
    spec_hash: str
    resume_file: Path | None
    log: object
    carry: dict | None = None  # keep_bn_copies: the init checkpoint whose other BN copy the export carries


def setup(spec: dict, data_path, init=None, resume_dir=None, device="auto", log=print, labels=None) -> Job:
    """Seed, load the data (its training labels replaced by the pseudo-labels file `labels`
    where given: a pseudo-label stage), build the model (from `init` where given), choose the
    fast path and build the optimiser and the step runner."""
    started = time.time()
    stage = spec["stage"]
    dev = pick_device(device)
    set_deterministic(spec.get("deterministic", False))
    torch.manual_seed(spec["seed"])
    data = D.load(data_path, dev)
    if labels:
        data = relabel(data, labels)
    model, task = build(spec, data["num_classes"])
    init_weights(model, spec.get("weight_init", "default"))  # before any transfer: the untransferred part
    transfer, frozen = None, ()
    partial, trains = bool(spec.get("partial", False)), spec.get("partial_trains", "untransferred")
    if partial and not init:
        raise AdvssError("partial fine-tuning (F1/F2) needs a pretrained model (--init)")
    head_init, carry = spec.get("head_init", "default"), None
    if head_init not in ("default", "zero", "init"):
        raise AdvssError(f"head_init must be default, zero or init, not {head_init!r}")
    if (head_init == "init" or spec.get("keep_bn_copies")) and not init:
        raise AdvssError("head_init 'init' and keep_bn_copies need a checkpoint to start from (--init)")
    if spec.get("keep_bn_copies") and spec.get("dual_bn"):
        raise AdvssError("keep_bn_copies is for a one-copy job on a dual-BN checkpoint; dual_bn keeps both itself")
    if trains not in PARTIAL_TRAINS:
        raise AdvssError(f"partial_trains must be one of {PARTIAL_TRAINS}, not {trains!r}")
    if init:
        ck = load_checkpoint(init, spec["model"])
        prefixes = ck.get("transfer_prefixes", ["trunk."])
        if spec.get("dual_bn"):  # a dual-BN fine-tuning (RSB's AFF): both BN copies, the adversarial one kept
            try:
                ck = dual_bn_finetune(model, ck, init)
            except ValueError as e:
                raise AdvssError(str(e)) from None
        if spec.get("keep_bn_copies"):  # a pseudo-label stage: one copy trained, the other carried along
            if not ck.get("bn_copies"):
                raise AdvssError(f"keep_bn_copies: {init} keeps one BN copy; it needs a dual-BN pretraining")
            carry = ck
        # head_init 'init': the head too (a probed head: a fine-tuning that starts from a linear probe's)
        transfer = load_trunk(model, ck, [*prefixes, "head."] if head_init == "init" else prefixes, init)
        if head_init == "zero":  # RSB zeroes the linear head before fine-tuning
            zero_head(model)
        log(f"loaded {transfer['loaded']} pretrained trunk tensors from {init}; "
            f"{len(transfer['kept_at_init'])} kept at init")
        if partial:
            frozen = freeze_transferred(model, prefixes, trains)
            transfer["frozen_prefixes"] = list(frozen)
    obj = spec["objective"]
    fast = fast_settings(spec, dev)
    fast["sdpa"], fast["why"]["sdpa"] = attention_kernel(obj)  # the attention kernel (Selfie's transformer)
    requested = {**fast, "why": dict(fast["why"])}
    if fast["compile"] and needs_double_backward(obj):
        fast["compile"] = False
        fast["why"]["compile"] = ("off: the objective differentiates twice (AP+DPE's log-det regulariser), "
                                  "which compiled graphs do not support")
        log("torch.compile is off for this job: its objective differentiates twice (AP+DPE's log-det "
            "regulariser), which compiled graphs do not support; the step is still captured as a graph")
    apply_fast(model, dev, fast)
    params = [p for p in model.parameters() if p.requires_grad]
    o = spec["optim"]
    opt = torch.optim.SGD(params, lr=float(o["lr"]), momentum=float(o.get("momentum", 0.9)),
                          weight_decay=float(o.get("weight_decay", 0.0)), nesterov=bool(o.get("nesterov", False)))
    if o.get("optimizer", "sgd") not in ("sgd", "lars"):
        raise AdvssError(f"optim.optimizer must be sgd or lars, not {o['optimizer']!r}")
    if o.get("optimizer") == "lars":  # the step's LARS (advss.step._lars), with SGD's momentum buffers
        opt.param_groups[0]["lars_eta"] = float(o.get("lars_eta", 0.001))
    init_momentum(opt)
    # a task may run each step's objective inside its own work (a momentum encoder's EMA update)
    objective = getattr(task, "wrap_objective", lambda f: f)(OBJECTIVES[obj["kind"]])
    threat_cfg = spec.get("threat")
    train_threat = Threat.from_cfg(threat_cfg, "train_steps") if threat_cfg else None
    eval_threat = Threat.from_cfg(threat_cfg, "eval_steps") if threat_cfg and spec.get("eval_ra", True) else None
    if obj["kind"] in ("adversarial", "trades", "acl") and train_threat is None:
        raise AdvssError(f"objective {obj['kind']!r} needs a threat model in the spec")

    fx, fy = data["fit"]
    vx, vy = data["val"]
    if spec.get("train_data", "fit") not in ("fit", "all"):
        raise AdvssError(f"train_data must be 'fit' or 'all', not {spec['train_data']!r}")
    if spec.get("train_data") == "all":  # RSB: every training image; validation then only tracks progress
        if spec.get("select_by") != "last":
            raise AdvssError("train_data 'all' trains on the validation images too: select_by must be 'last'")
        fx, fy = torch.cat([fx, vx]), torch.cat([fy, vy])
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
    step_fn = functools.partial(train_step, model, task, objective, obj, train_threat, opt, fast["bf16"])
    runner = StepRunner(step_fn, dev, fast["graphs"], log=log, model=model, opt=opt,
                        precision="bf16" if fast["bf16"] else "fp32")
    log(f"fast path on {fast['device']}: bf16 {fast['bf16']}, channels-last {fast['channels_last']}, "
        f"compile {fast['compile']}, graphs {fast['graphs']}, attention {fast['sdpa']}; "
        f"{steps_per_epoch} batches of {bs} per epoch"
        + (f" ({len(fx) - steps_per_epoch * bs} left over each epoch)" if len(fx) % bs else "")
        + "; why: " + "; ".join(f"{k} {v}" for k, v in fast["why"].items()))
    return Job(spec=spec, stage=stage, started=started, dev=dev, model=model, task=task, opt=opt, runner=runner,
               fast=fast, fast_requested=requested,
               frozen=frozen, transfer=transfer, fit=(fx, fy), val=(vx, vy), eval_threat=eval_threat, bs=bs,
               epochs=epochs, seed=seed, steps_per_epoch=steps_per_epoch, spec_hash=spec_hash(spec),
               resume_file=Path(resume_dir) / "last.pt" if resume_dir else None, log=log, carry=carry)


def resume(job: Job) -> LoopState:
    """The state of last.pt, with its weights and optimiser loaded into the job, or a fresh state."""
    if not (job.resume_file and job.resume_file.exists()):
        return LoopState()
    r = torch_load(job.resume_file, "resume checkpoint")
    if r.get("spec_hash") != job.spec_hash:
        raise AdvssError(f"resume file {job.resume_file} belongs to a different job spec "
                         f"({r.get('spec_hash')} != {job.spec_hash}); delete it to start over")
    job.model.load_state_dict(r["model"])
    job.opt.load_state_dict(r["optim"])
    init_momentum(job.opt)
    state = LoopState(**r["state"])
    job.log(f"resuming from {job.resume_file}: epoch {state.epoch + 1}, batch {state.batch}")
    return state


def save_resume(job: Job, state: LoopState):
    torch_save(job.resume_file, {"spec_hash": job.spec_hash, "model": job.model.state_dict(),
                                 "optim": job.opt.state_dict(), "state": state.as_dict()})


def run_epoch(job: Job, state: LoopState, stop: _Stop, bar: bool, on_epoch=None):
    """The rest of epoch `state.epoch` from batch `state.batch`, its validation, its
    metrics row and best checkpoints, and the resume file; exits 143 when a signal asked to stop."""
    spec, model, task, opt, dev, log = job.spec, job.model, job.task, job.opt, job.dev, job.log
    (fx, fy), (vx, vy) = job.fit, job.val
    bs, epochs, seed, steps_per_epoch, o = job.bs, job.epochs, job.seed, job.steps_per_epoch, spec["optim"]
    epoch = state.epoch
    t0 = time.time()
    _set_mode(model, job.frozen)
    task.set_epoch(epoch, epochs, dev)  # a task's per-epoch schedule (Task.set_epoch); most have none
    order = torch.randperm(len(fx), generator=generator(batch_seed(seed, epoch, -1), dev), device=dev)
    run = state.run
    loss_acc = torch.zeros((), device=dev, dtype=torch.float64)  # on the device: no host sync per batch;
    # float64 so that a resumed epoch (summed in two parts) rounds like an uninterrupted one
    correct_acc = torch.zeros((), device=dev, dtype=torch.float64)
    steady = None  # (time, batch) from which this epoch's batches are timed: after warm-up and capture
    for b in range(state.batch, steps_per_epoch):
        if steady is None and job.runner.steady:
            _sync(dev)
            steady = (time.time(), b)
        lr = lr_at(o, epoch, epoch * steps_per_epoch + b, steps_per_epoch, epochs)
        for g in opt.param_groups:
            g["lr"] = lr
        gen = generator(batch_seed(seed, epoch, b), dev)
        torch.manual_seed(batch_seed(seed, epoch, b))  # dropout draws (Selfie's transformer)
        idx = order[b * bs:(b + 1) * bs]
        xb = D.augment(D.to_float(fx[idx]), gen) if spec.get("augment", True) else D.to_float(fx[idx])
        inputs, targets = task.make_batch(xb, fy[idx], gen)
        loss, logits = job.runner(inputs, targets, gen, lr)
        loss_acc += loss * bs
        correct_acc += task.correct(logits, targets).float().sum()
        run["n"] += bs
        state.batch = b + 1
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
            if job.resume_file:
                save_resume(job, state)
                log(f"received {stop.requested}: saved {job.resume_file} at epoch {epoch + 1} batch {b + 1}; exiting")
            sys.exit(143)
    _sync(dev)
    seconds = run["seconds"] + time.time() - t0
    done = steps_per_epoch - steady[1] if steady else 0
    spb = round((time.time() - steady[0]) / done, 5) if done else None
    state.s_per_batch.append(spb)
    if job.runner.mode != job.runner.logged_mode:  # once per job (None at first), and when it changes
        job.runner.logged_mode = job.runner.mode
        log(f"training step path: {step_path(job)}")
    t_eval = time.time()
    # per-epoch validation keeps the training precision (it only selects a checkpoint);
    # the reported test numbers are computed in fp32 (advss.evaluate)
    ev = evaluate(model, task, vx, vy, job.eval_threat, max(bs, 256), seed, job.fast["bf16"])
    row = {"epoch": epoch + 1, "lr": round(lr, 8), "train_loss": round(run["loss"] / max(run["n"], 1), 6),
           "train_acc": round(run["correct"] / max(run["n"], 1), 6),
           "val_ta": round(float(ev["clean"].mean()), 6),
           "val_ra": round(float(ev["adv"].mean()), 6) if ev["adv"] is not None else "",
           "seconds": round(seconds, 2)}
    state.rows.append(row)
    sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if row["val_ta"] > state.best_ta:
        state.best_ta, state.best_ta_epoch, state.best_ta_state = row["val_ta"], epoch + 1, sd
    if row["val_ra"] != "" and row["val_ra"] > state.best_ra:
        state.best_ra, state.best_ra_epoch, state.best_ra_state = row["val_ra"], epoch + 1, sd
    state.epoch, state.batch, state.run = epoch + 1, 0, _fresh_run()
    eta = (seconds + time.time() - t_eval) * (epochs - epoch - 1)  # training + validation per epoch
    if bar:
        sys.stdout.write("\r\x1b[K")  # erase the bar before the permanent line
    log(_epoch_line(row, epochs, eta, spb))
    if on_epoch:
        on_epoch(row)
    if job.resume_file:
        save_resume(job, state)
    if stop.requested:
        log(f"received {stop.requested}: epoch {epoch + 1} saved in {job.resume_file}; exiting")
        sys.exit(143)


def finish(job: Job, state: LoopState, select: str, out_model, out_metrics, out_meta, out_best_ta=None):
    """Write the selected checkpoint (and the best-TA one), the metrics and the meta; drop last.pt."""
    spec, model, task = job.spec, job.model, job.task
    final = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    chosen = {"val_ra": state.best_ra_state, "val_ta": state.best_ta_state, "last": final}[select]
    if chosen is None:
        raise AdvssError(f"select_by={select!r} but no such metric was recorded")
    extra = {"task": spec["task"], "task_state": task.state(), "transfer_prefixes": list(task.transfer_prefixes),
             "spec_hash": job.spec_hash}
    export = adv_copy if spec.get("dual_bn") else task.export  # a dual-BN fine-tuning keeps its adversarial BN

    def save(path, weights):
        model.load_state_dict(weights)
        exported = export(model)
        more = getattr(exported, "extra", {})
        if job.carry:  # both BN copies, for a later dual-BN AFF (advss.pseudolabel.carried_bn_copies)
            more = {**more, "bn_copies": carried_bn_copies(job.carry, exported.state_dict())}
        save_checkpoint(path, exported, spec["model"], **extra, **more)

    save(out_model, chosen)
    if out_best_ta:
        save(out_best_ta, state.best_ta_state)
    write_text(out_metrics, _rows_to_csv(state.rows))
    write_json(out_meta, provenance(
        spec, job.dev, job.started, stage=job.stage, epochs_run=len(state.rows), select_by=select,
        train_seconds=round(sum(r["seconds"] for r in state.rows), 2),  # across resumes
        best_ra=state.best_ra, best_ra_epoch=state.best_ra_epoch,
        best_ta=state.best_ta, best_ta_epoch=state.best_ta_epoch,
        epochs_to_best={"val_ra": state.best_ra_epoch, "val_ta": state.best_ta_epoch}.get(select, len(state.rows)),
        transfer=job.transfer, batches_per_epoch=job.steps_per_epoch,
        # what ran, beside what was asked: a graph that fell back is recorded as graphs 'off'
        fast={**job.fast, "graphs": job.fast["graphs"] if job.runner.captured else "off"},
        fast_requested=job.fast_requested, step_path=step_path(job),
        replay_check=job.runner.check, s_per_batch_after_warmup=state.s_per_batch,
        val_precision="bf16" if job.fast["bf16"] else "fp32"))
    if job.resume_file and job.resume_file.exists():
        job.resume_file.unlink()


def step_path(job: Job) -> str:
    """The training step's path as it really ran: 'captured', 'fallback: <reason>', 'off',
    or 'eager (ended during warm-up)' for a job too short to reach capture."""
    mode = job.runner.mode
    return "eager (ended during warm-up)" if mode == "warm-up" else mode


def path_fields(meta: dict) -> dict:
    """What a training job really ran, from its meta.json (gpucheck and the benchmark report
    it per row); `path_ok` is False when CUDA graphs (or their CPU stand-in) were asked for
    and the step did not end up captured."""
    asked = meta["fast_requested"]["graphs"]
    return {"graphs_requested": asked, "step_path": meta["step_path"], "replay_check": meta["replay_check"],
            "compile": meta["fast"]["compile"], "path_ok": asked == "off" or meta["step_path"] == "captured"}


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def train(spec: dict, data_path, out_model, out_metrics, out_meta, init=None, out_best_ta=None,
          resume_dir=None, device="auto", log=print, on_epoch=None, labels=None):
    """Train one model as `spec` says and write its checkpoint, metrics and meta.
    `on_epoch(row)` is called after each epoch (benchmarks and gpucheck use it); `labels`: a
    pseudo-label file that replaces the training labels (advss.pseudolabel.relabel).
    Returns the final state as a dict (the resume file's "state")."""
    job = setup(spec, data_path, init, resume_dir, device, log, labels)
    lock = exclusive_lock(resume_dir) if resume_dir else contextlib.nullcontext()
    with lock:
        state = resume(job)
        stop = _Stop()
        select = spec.get("select_by", "val_ra" if job.eval_threat else "val_ta")
        bar = sys.stdout.isatty()  # a live bar in a terminal only; SLURM and Snakemake logs get epoch lines
        while state.epoch < job.epochs:
            run_epoch(job, state, stop, bar, on_epoch)
        finish(job, state, select, out_model, out_metrics, out_meta, out_best_ta)
    return state.as_dict()


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _epoch_line(row, epochs, eta, spb=None):
    """One fixed-width line per epoch, starting with the wall-clock time, so that a
    SLURM log file reads as a table (airbench's print_columns); `spb`: seconds per batch
    after warm-up and capture (the step's steady speed), when any batch was steady."""
    ra = "  n/a" if row["val_ra"] == "" else f"{row['val_ra']:.3f}"
    ms = f"{spb * 1000:7.1f} ms/batch" if spb else " " * 15
    return (f"{time.strftime('%H:%M:%S')}  epoch {row['epoch']:>3}/{epochs}  lr {row['lr']:<9.4g} "
            f"loss {row['train_loss']:<8.4f} acc {row['train_acc']:.3f}  val TA {row['val_ta']:.3f}  val RA {ra}  "
            f"{row['seconds']:6.1f}s {ms}  ETA {_hms(eta)}")


def _live_bar(epoch, epochs, done, steps, elapsed, width=30):
    """Overwrite one terminal line with the progress of the current epoch (TTY only)."""
    fill = int(width * done / steps)
    eta = elapsed / done * (steps - done)
    sys.stdout.write(f"\repoch {epoch + 1}/{epochs} [{'#' * fill}{'.' * (width - fill)}] {done}/{steps} "
                     f"batches  {elapsed:5.1f}s  epoch ETA {_hms(eta)}")
    sys.stdout.flush()
