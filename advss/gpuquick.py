"""`python -m advss.gpuquick`: the GPU check that fits one 15-minute device lease.

    mkdir -p $OUT; export TORCHINDUCTOR_CACHE_DIR=$PWD/.cache/torch-compile
    timeout 420 python -m advss.gpuquick --out $OUT/gpuquick.json 2>&1 | tee $OUT/gpuquick.txt

Sized for 6 minutes on one H100/H200 from a cold compile cache: `--deadline` (360 s)
stops it itself, and the JSON is rewritten after every row, so a cut-short run still
leaves every figure measured so far. Rows, most important first, all on the code path
the jobs run (`advss.train.train` with the config's fast settings, CIFAR ResNet-50):

  1. gpucheck (P1,F4) fine-tuning: the step's path (captured / fallback), the replay
     check's figures, s/batch after warm-up, recompiles;
  2. the benchmark's (P1,F4) PGD-10 AT epoch at batch 128, graphs and compile on, and the
     reference-style loop in the same run (targets: ≤ 10 s per 45k epoch, ≥ 8×);
     then the drill: a capture that fails at the stream level on purpose (`drill_row`);
  3. the same epoch with graphs off (the A/B that says what the graph gives);
  4. gpucheck Selfie AT pretraining (dropout in the graph), AP+DPE (double backward, the
     closed-form log-det), Rotation AT pretraining;
  5. the A/B's other half: compile off with graphs on and off;
  6. gpucheck evaluate and AutoAttack;
  7. 1 vs 2 concurrent jobs on the GPU;
  8. the fp32/bf16 PGD-20 RA check on 512 images;
  9. standard-training epoch and test-evaluation throughput, then the config's GPU-hours
     (training, per-epoch validation and test evaluation);
 10. ACL pretraining at `config/robust-ssl.yaml`'s settings (ResNet-18, batch 512, PGD-5,
     LARS): its step path and s per 45k-image epoch.

The full checks stay available for a longer run: `python -m advss.gpucheck` (every job
kind) and `python -m advss.bench` (batch 128 and 512, 1/2/4 jobs).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from advss import bench, gpucheck

AB = {"graphs+compile": {}, "graphs off, compile on": {"cuda_graphs": False},
      "graphs on, compile off": {"compile": False}, "graphs off, compile off": {"cuda_graphs": False, "compile": False}}


def _bench_row(cfg, fast, variant, mode, bs, batches, work, device):
    r = bench.pipeline_speed(cfg, mode, bs, batches, {**fast, **AB[variant]}, work, device)
    if not r["path_ok"]:
        raise RuntimeError(f"graphs {r['graphs_requested']} requested, but the step ran: {r['step_path']}")
    return {**{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}, "variant": variant,
            "batch": bs, "mode": mode}


@contextlib.contextmanager
def _item_while_capturing():
    """The drill's step: the training step, which reads `inputs.sum().item()` while it is
    being captured (only then: eager steps never do), with attention on the math kernel
    (deterministic, so that the drill's run and the eager run can be compared exactly)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from advss import standin
    from advss import train as T

    real = T.train_step

    def step(*args):
        if (args[7].is_cuda and torch.cuda.is_current_stream_capturing()) or standin.capturing():
            args[7].sum().item()  # the inputs: a host read, which invalidates a CUDA capture
        with sdpa_kernel(SDPBackend.MATH):
            return real(*args)

    T.train_step = step
    try:
        yield
    finally:
        T.train_step = real


def drill_row(fast, model, work, device, batch=64, batches=6):
    """The fallback drill (issue 23): Selfie AT pretraining, dropout in its transformer, with
    graphs on and a step that reads `x.item()` while captured. On CUDA the capture fails in
    cudaStreamEndCapture, which skips the generator's capture epilogue and the pool's release
    (`advss.capture`); the job must fall back, continue eagerly with dropout and finish with
    exactly the metrics of an eager run of the same step. Deterministic kernels, no compile."""
    import argparse
    import csv

    import torch
    import yaml

    from advss.train import train

    pretext = yaml.safe_load((gpucheck.ROOT / "config" / "demo.yaml").read_text())["pretext"]  # a 2-layer transformer
    a = argparse.Namespace(train_steps=2, eval_steps=2, batch=batch, n_eval=batch)
    spec = {**gpucheck.pretrain_spec("selfie-adv", a, {"pretext": pretext}, model, {}), "deterministic": True}
    data = bench._dataset(work, batch * batches + batch // 2)
    prev = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    runs, logs = {}, []
    try:
        with _item_while_capturing():
            for name, graphs in (("drill", True), ("eager", False)):
                d = Path(work) / f"drill-{name}"
                train({**spec, "fast": {**fast, "compile": False, "cuda_graphs": graphs}}, data, d / "m.pt",
                      d / "m.csv", d / "meta.json", device=device, log=logs.append)
                with open(d / "m.csv") as f:
                    rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
                runs[name] = rows, json.loads((d / "meta.json").read_text())
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])  # the later rows time the default path
        if prev[2] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    (rows, meta), (eager_rows, _) = runs["drill"], runs["eager"]
    diff = max((abs(float(r[k]) - float(e[k])) for r, e in zip(rows, eager_rows) for k in r if r[k] not in ("", None)),
               default=0.0)
    out = {"step_path": meta["step_path"], "metrics_equal": rows == eager_rows, "max_abs_diff": diff,
           "batch": batch, "log": [m for m in logs if "graph" in m][:4]}
    if not meta["step_path"].startswith("fallback:"):
        raise RuntimeError(f"the drill's capture did not fail: the step ran {meta['step_path']}")
    if rows != eager_rows:
        raise RuntimeError(f"the drill's job finished with other metrics than the eager run (max |diff| {diff:.3g})")
    return out


def acl_row(path, fast, batches, work, device, arch=None, width=None):
    """ACL pretraining as the workflow's `pretrain` rule specifies it from `path`'s
    robust_ssl section (model, threat with the section's steps, batch, optimiser), for two
    epochs of `batches` batches; s per 45k-image epoch from the second."""
    import yaml

    from advss import protocol as P

    cfg = yaml.safe_load(Path(path).read_text())
    rs = cfg["robust_ssl"]
    model = {**cfg["model"], **({"arch": arch} if arch else {}), **({"width": width} if width else {})}
    bs = int(rs["batch_size"])
    spec = {"stage": "pretrain", "model": model, "seed": 0, "deterministic": False, "fast": fast, "epochs": 2,
            "threat": {**cfg["threat"], "train_steps": rs.get("train_steps", cfg["threat"]["train_steps"])},
            **P.contrastive_spec("acl", rs.get("contrastive", {})), "val_max": 256, "select_by": "last",
            "batch_size": bs, "optim": {**rs["optim"], "warmup_steps": 0}}
    data = bench._dataset(work, bs * batches + bs // 2)
    r = gpucheck.run_train(spec, data, Path(work), "acl-pretrain")
    r.pop("model")
    if not r["path_ok"]:
        raise RuntimeError(f"graphs {r['graphs_requested']} requested, but the step ran: {r['step_path']}")
    return {**r, "batch": bs, "s_epoch_45k": round(r["s_per_batch"] * bench.EPOCH / bs, 2)}


def main(argv=None):
    import torch
    import yaml

    ap = argparse.ArgumentParser(prog="python -m advss.gpuquick", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml", help="model, threat, optimiser, fast settings; protocol")
    ap.add_argument("--arch", help="override the config's model (e.g. resnet-tiny for the CPU test)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--batches", type=int, default=40, help="timed batches per epoch of the benchmark rows")
    ap.add_argument("--check-batches", type=int, default=6, help="batches per epoch of the gpucheck rows")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=10)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--ref-iters", type=int, default=15)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--check-n", type=int, default=512, help="images of the fp32/bf16 RA check")
    ap.add_argument("--check-steps", type=int, default=100, help="AT steps before the fp32/bf16 RA check")
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--fast", default="{}", help="JSON overrides of the fast settings (forced on the CPU test)")
    ap.add_argument("--acl-config", default="config/robust-ssl.yaml", help="the ACL row's settings (robust_ssl)")
    ap.add_argument("--acl-batches", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--deadline", type=float, default=360.0, help="seconds: stop, with valid JSON, before this")
    ap.add_argument("--work")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    a.work = a.work or tempfile.mkdtemp(prefix="advss-gpuquick-")

    from advss import data as D
    from advss.attacks import Threat
    from advss.io import pick_device
    from advss.models import classifier

    dev = pick_device(a.device)
    device = str(dev)
    cfg = yaml.safe_load(Path(a.config).read_text())
    cfg["model"] = {**cfg["model"], **({"arch": a.arch} if a.arch else {}), **({"width": a.width} if a.width else {})}
    fast = {**(cfg.get("fast") or {}), **json.loads(a.fast)}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"gpuquick on {name}, torch {torch.__version__}, {cfg['model']}, fast {fast}, deadline {a.deadline:g} s",
          flush=True)
    record = gpucheck.Record(a.out, {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                                     "model": cfg["model"], "config": a.config, "fast": fast,
                                     "time": time.strftime("%Y-%m-%d %H:%M:%S")}, a.deadline)
    gargs = gpucheck.parser().parse_args([
        "--config", str(gpucheck.ROOT / "config" / "demo.yaml"), "--pretext-config", a.config,
        "--arch", cfg["model"]["arch"], "--width", str(cfg["model"].get("width", 64)), "--batch", str(a.batch),
        "--batches", str(a.check_batches), "--n-eval", str(a.n_eval), "--train-steps", str(a.train_steps),
        "--eval-steps", str(a.eval_steps), "--fast", json.dumps(fast), "--device", device])
    figures = {}

    def row(name, fn):
        r = gpucheck.timed_row(record, name, fn)
        if r is not None:
            figures[name] = r
            shown = {k: r[k] for k in ("img_s", "s_epoch_45k", "step_path", "recompiles", "error") if k in r}
            print(f"{name:<44}{'ok' if r['ok'] else 'FAILED':<8}{json.dumps(shown)[:240]}", flush=True)
        return r

    def bench_row(variant, mode="at"):
        return row(f"bench {mode.upper()}-{a.batch} {variant}",
                   lambda: _bench_row(cfg, fast, variant, mode, a.batch, a.batches, Path(a.work) / "bench", device))

    x_u8, y = D.make_procedural(60, seed=0)
    x_u8, y = x_u8.to(dev), y.to(dev)
    try:
        checker = gpucheck.Checker(gargs)
        checker.run(record, ["finetune scratch F4"])
        main_row = bench_row("graphs+compile")

        def reference():
            ips = bench.run_reference(classifier(cfg["model"], 10).to(dev), x_u8, y, "at", Threat(steps=a.train_steps),
                                      a.batch, a.ref_iters, dev, a.workers)
            out = {"img_s": round(ips, 1), "s_epoch_45k": round(bench.EPOCH / ips, 2)}
            if main_row and main_row["ok"]:
                out["pipeline_speedup"] = round(main_row["img_s"] / ips, 2)
                out["targets"] = {"epoch_le_10s": main_row["s_epoch_45k"] <= 10.0,
                                  "speedup_ge_8x": main_row["img_s"] / ips >= 8.0}
            return out

        row(f"reference-style AT-{a.batch} (fp32, DataLoader)", reference)
        row("drill: x.item() in capture, then eager with dropout",
            lambda: drill_row(fast, cfg["model"], Path(a.work) / "drill", device, min(a.batch, 64), a.check_batches))
        bench_row("graphs off, compile on")
        checker.run(record, ["selfie-adv", "ensemble-dpe", "rotation-adv"])
        bench_row("graphs on, compile off")
        bench_row("graphs off, compile off")
        checker.run(record, ["evaluate", "autoattack"])
        if dev.type == "cuda":
            row("concurrent AT-128 jobs: 1 vs 2", lambda: {"runs": [
                bench.concurrent(k, a, Path(a.work) / f"conc{k}", bs=128, timeout=record.left) for k in (1, 2)]})
        row(f"fp32/bf16 PGD-20 RA check ({a.check_n} images)",
            lambda: bench.numerical_check(cfg["model"], x_u8, y, dev, min(a.check_n, len(y)), a.check_steps, 256))
        st = bench_row("graphs+compile", "st")
        ev = row("test PGD-20 evaluation (fp32)",
                 lambda: {"img_s": round(bench.eval_speed(cfg, fast, Path(a.work) / "bench", a.eval_n, device), 1)})
        if main_row and main_row["ok"] and st and st["ok"] and ev and ev["ok"]:
            row("protocol GPU-hours", lambda: bench.protocol_estimate(
                cfg, {"at": main_row["s_epoch_45k"], "st": st["s_epoch_45k"]}, ev["img_s"]))
        row("ACL pretraining (robust-ssl.yaml)", lambda: acl_row(a.acl_config, fast, a.acl_batches,
                                                                 Path(a.work) / "acl", device, a.arch, a.width))
    except gpucheck.DeadlineReached:
        pass
    return gpucheck.summarise(record)


if __name__ == "__main__":
    raise SystemExit(0 if main()["all_ok"] else 1)
