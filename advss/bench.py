"""Benchmark: the speed a user gets, measured on the code path the jobs run.

    python -m advss.bench --out benchmarks/<gpu>.json            # on a GPU: CIFAR ResNet-50
    python -m advss.bench --arch resnet-tiny --width 8 --batches 4 --batch-sizes 16 --concurrent 1  # CPU smoke

Times `advss.train.train` itself (the one training loop of every pretraining and
fine-tuning job: device-resident data, on-device augmentation, the default fast settings
with CUDA graphs and compile) for --batches batches per epoch at each of --batch-sizes
(128, the paper's, and 512): the second epoch is timed, and torch.compile must build
nothing new in it (recompiles after warm-up, reported; must be 0). Beside it, in the same
run: the reference-style loop (fp32, CPU DataLoader with torchvision transforms, a
host-to-device copy per batch) and a plain bf16 + channels-last eager loop, both PGD-10 AT
at batch 128; the test-set PGD-20 evaluation as `advss.evaluate` runs it (fp32); the
total throughput of 1, 2 and 4 concurrent training jobs on one GPU; the bf16-vs-fp32 RA
check; and the whole-protocol estimate for --config in GPU-hours. One JSON record (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from advss import data as D
from advss.attacks import Threat, pgd
from advss.models import classifier
from advss.fast import autocast

EPOCH = 45_000  # CIFAR-10 training images after the 9:1 split


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def matmul_peak(dev, n=8192, reps=20) -> float:
    """Measured dense bf16 matmul TFLOP/s (fp32 on a CPU, where bf16 is emulated)."""
    dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    n = n if dev.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=dev, dtype=dt), torch.randn(n, n, device=dev, dtype=dt)
    for _ in range(3):
        a @ b
    _sync(dev)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def forward_flops(model, dev) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        model(torch.rand(1, 3, 32, 32, device=dev))
    return fc.get_total_flops()


def _step(model, opt, x, y, mode, threat, gen, bf16):
    """One unit of work: 'st' train step, 'at' PGD AT step, 'eval' PGD-20 evaluation."""
    ce = lambda z: F.cross_entropy(model(z), y, reduction="none")  # noqa: E731
    with autocast(x.device, bf16):
        if mode == "eval":
            model.eval()
            return pgd(ce, x, threat, gen)
        model.train()
        if mode == "at":
            x = pgd(ce, x, threat, gen)
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def run_reference(model, x_u8, y, mode, threat, bs, iters, dev, workers):
    import torchvision.transforms as T

    class DS(torch.utils.data.Dataset):
        def __init__(self):
            self.x, self.y = x_u8.cpu(), y.cpu()
            self.tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            img = self.x[i].float() / 255
            return (self.tf(img) if mode != "eval" else img), self.y[i]

    loader = torch.utils.data.DataLoader(DS(), batch_size=bs, shuffle=True, num_workers=workers, drop_last=True,
                                         persistent_workers=workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    it, done, t = iter(loader), -2, None
    while done < iters:
        try:
            xb, yb = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == 0:
            _sync(dev)
            t = time.perf_counter()
        _step(model, opt, xb.to(dev), yb.to(dev), mode, threat, None, False)
        done += 1
    _sync(dev)
    return bs * iters / (time.perf_counter() - t)


def numerical_check(model_cfg, x_u8, y, dev, n_eval, train_steps, bs):
    """Train one model briefly (fp32 PGD AT), then PGD-20 RA in bf16 and in fp32."""
    torch.manual_seed(0)
    model = classifier(model_cfg, 10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator(device=dev).manual_seed(0)
    threat = Threat(steps=10)
    for _ in range(train_steps):
        idx = torch.randint(0, len(x_u8), (bs,), device=dev, generator=gen)
        _step(model, opt, D.to_float(x_u8[idx]), y[idx], "at", threat, gen, False)
    model.eval()
    x, yy = D.to_float(x_u8[:n_eval]), y[:n_eval]
    ev = Threat(steps=20)
    ra = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        correct = 0
        for i in range(0, n_eval, 500):
            g = torch.Generator(device=dev).manual_seed(i)
            xa = _step(model, None, x[i:i + 500], yy[i:i + 500], "eval", ev, g, bf16)
            with torch.no_grad(), autocast(dev, bf16):
                correct += (model(xa).argmax(1) == yy[i:i + 500]).sum().item()
        ra[name] = 100 * correct / n_eval
    return {"ra_fp32": ra["fp32"], "ra_bf16": ra["bf16"], "diff_pp": abs(ra["fp32"] - ra["bf16"]), "n": n_eval}


def _train_spec(cfg, mode, bs, batches, fast):
    """The (P1,F4) / (P1,F3) fine-tuning spec of the config, two epochs of `batches` batches."""
    adv = mode == "at"
    return {"stage": "finetune", "task": "classification", "model": cfg["model"], "threat": cfg["threat"],
            "seed": 0, "deterministic": False, "fast": fast, "epochs": 2, "batch_size": bs, "augment": True,
            "objective": {"kind": "adversarial", "mix": "adv"} if adv else {"kind": "standard"},
            "eval_ra": False, "select_by": "val_ta", "val_max": 256,
            "optim": {**cfg["finetune"]["optim"], "milestones": [], "warmup_steps": 0}}


def _dataset(work, n_fit, n_val=256):
    from advss.data import prepare

    per_class = -(-(n_fit + n_val) // 10)
    path = Path(work) / f"data-{n_fit}.pt"
    if not path.exists():
        prepare({"name": "procedural", "procedural": {"n_per_class": per_class, "n_test_per_class": 100, "seed": 0},
                 "val_fraction": n_val / (10 * per_class), "split_seed": 0}, path)
    return path


def pipeline_speed(cfg, mode, bs, batches, fast, work, device="auto"):
    """images/s of the second epoch of `advss.train.train`, and graphs built during it."""
    from advss.fast import graphs_compiled
    from advss.train import path_fields, train

    data = _dataset(work, bs * batches + bs // 2)
    marks, d = [], Path(work) / f"{mode}-{bs}-{abs(hash(json.dumps(fast, sort_keys=True))) % 10**6}"
    train(_train_spec(cfg, mode, bs, batches, fast), data, d / "m.pt", d / "m.csv", d / "meta.json",
          device=device, log=lambda m: None, on_epoch=lambda row: marks.append((graphs_compiled(), row["seconds"])))
    meta = json.loads((d / "meta.json").read_text())
    return {"img_s": bs * batches / marks[1][1], "recompiles": marks[1][0] - marks[0][0],
            "s_epoch_45k": EPOCH * marks[1][1] / (bs * batches), **path_fields(meta)}


def plain_bf16(model_cfg, x_u8, y, bs, iters, dev):
    """A plain bf16 + channels-last eager PGD-10 AT loop (the peer loop of gpu.md)."""
    torch.manual_seed(0)
    model = classifier(model_cfg, 10).to(dev, memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=dev).manual_seed(0)
    threat = Threat(steps=10)

    def one():
        idx = torch.randint(0, len(x_u8), (bs,), device=dev, generator=gen)
        _step(model, opt, D.to_float(x_u8[idx]).contiguous(memory_format=torch.channels_last), y[idx], "at",
              threat, gen, dev.type == "cuda")

    for _ in range(2):
        one()
    _sync(dev)
    t = time.perf_counter()
    for _ in range(iters):
        one()
    _sync(dev)
    return bs * iters / (time.perf_counter() - t)


def eval_speed(cfg, fast, work, n, device="auto"):
    """Test-set PGD-20 as `advss.evaluate.run` does it (fp32, its batch size): images/s, run twice."""
    from advss.evaluate import run
    from advss.models import save_checkpoint

    data = _dataset(work, 512)
    ck = Path(work) / "eval-model.pt"
    save_checkpoint(ck, classifier(cfg["model"], 10), cfg["model"])
    spec = {"model": cfg["model"], "threat": cfg["threat"], "seed": 0, "deterministic": False, "fast": fast,
            "n_examples": n, "batch_size": cfg.get("evaluate", {}).get("batch_size", 256)}
    run(spec, data, ck, Path(work) / "e.json", Path(work) / "e.npz", device)
    t = time.perf_counter()
    run(spec, data, ck, Path(work) / "e.json", Path(work) / "e.npz", device)
    return n / (time.perf_counter() - t)


def concurrent(k, args, work, bs=None, timeout=None):
    """Total images/s of k training jobs (PGD-10 AT at batch `bs`, default the first batch
    size) sharing one GPU, each its own process; `timeout()` gives the seconds left (the
    quick check's deadline), after which the children are killed."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "advss.bench", "--child", "--config", args.config, "--batches", str(args.batches),
           "--batch-sizes", str(bs or args.batch_sizes[0]), "--fast", args.fast, "--work", str(work)]
    cmd += (["--arch", args.arch] if args.arch else []) + (["--width", str(args.width)] if args.width else [])
    procs = [subprocess.Popen(cmd + ["--child-id", str(i)], stdout=subprocess.PIPE, text=True) for i in range(k)]
    try:
        outs = [json.loads(p.communicate(timeout=timeout and max(1.0, timeout()))[0].strip().splitlines()[-1])
                for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return {"jobs": k, "total_img_s": round(sum(o["img_s"] for o in outs), 1),
            "per_job_img_s": [round(o["img_s"], 1) for o in outs]}


# whole-protocol estimate: the cost of one epoch of each job kind relative to the measured
# PGD-10 AT ('at') or standard ('st') epoch of the pipeline loop at batch 128
KIND_FACTOR = {"pretrain-adv": ("at", 1 + 1 / 11),   # P3 adds a clean pass to PGD-10 AT
               "pretrain-std": ("st", 1.0),
               "ensemble-se": ("at", 3 * (1 + 1 / 11)),   # three members, each its own input
               "ensemble-dpe": ("at", 2 * 3 * (1 + 1 / 11)),  # plus double backward (≈2×)
               "finetune-adv": ("at", 1.0), "finetune-std": ("st", 1.0)}


def protocol_jobs(cfg):
    """(kind, epochs, images per epoch, validation images per epoch, validates RA) of the
    config's training jobs, and its test evaluations, read from the config as the workflow
    plans them (pure Python: no Snakemake needed)."""
    from advss import protocol as P

    tasks, seeds = cfg["pretrain"]["tasks"], len(cfg["seeds"])
    scen = [tuple(x) for x in cfg["finetune"]["scenarios"]]
    n_fit = {"cifar10": 45_000, "cifar100": 45_000, "fashion-mnist": 54_000}.get(cfg["data"]["name"], EPOCH)
    vf = float(cfg["data"].get("val_fraction", 0.1))
    n_val = round(n_fit * vf / (1 - vf))
    ft_val = min(n_val, cfg["finetune"].get("val_max") or n_val)
    jobs = []
    for pt in P.pretrain_jobs(scen, tasks):
        task, mode = pt.rsplit("-", 1)
        jobs.append((f"pretrain-{mode}", P.pretrain_epochs(cfg["pretrain"], task), n_fit, n_val, mode == "adv"))
    fts = P.scenario_jobs(scen, tasks)
    ens = cfg.get("ensemble")
    if ens:
        signs = ens.get("signs", [ens.get("sign", 1)]) if ("signs" in ens or "sign" in ens) else [1, -1]
        jobs += [("ensemble-se", ens["epochs"], n_fit, n_val, True)] + [
            ("ensemble-dpe", ens["epochs"], n_fit, n_val, True)] * len(signs)
        fts += [("ensemble", P.finetune_id(f)) for f in ens.get("finetune", ["F4"]) for _ in range(1 + len(signs))]
    fts += [("scratch", ft) for ft in sorted(set(P.matched_baselines(cfg).values()))]  # one job per budget
    for _src, ft in fts:
        adv = P.parse_ft(ft)[1]
        jobs.append((f"finetune-{'adv' if adv else 'std'}", P.ft_epochs(ft) or cfg["finetune"]["epochs"], n_fit,
                     ft_val, True))  # fine-tuning validates TA and PGD RA every epoch
    return [j for j in jobs for _ in range(seeds)], len(fts) * seeds


# a clean validation pass costs one forward per image, a PGD-K one K forward+backward passes
# and a forward (≈ 3K + 1 forward-equivalents): the measured PGD RA throughput scaled by that
CLEAN_VS_PGD20 = 3 * 20 + 1


def protocol_estimate(cfg, per_epoch_s, eval_img_s, n_test=10_000):
    """GPU-hours: training epochs at the measured seconds per epoch, the per-epoch validation
    the jobs run (TA and PGD RA at the measured test-evaluation throughput, which is fp32 and
    so an upper bound for bf16 validation; clean TA alone at 1/61 of that), and the test
    evaluations."""
    jobs, n_evals = protocol_jobs(cfg)
    train_s = sum(ep * per_epoch_s[KIND_FACTOR[k][0]] * KIND_FACTOR[k][1] * n / EPOCH for k, ep, n, _, _ in jobs)
    val_s = sum(ep * nv / eval_img_s * (1.0 if ra else 1 / CLEAN_VS_PGD20)
                for _, ep, _, nv, ra in jobs)
    eval_s = n_evals * n_test / eval_img_s
    total = train_s + val_s + eval_s
    return {"training_jobs": len(jobs), "evaluation_jobs": n_evals, "train_gpu_hours": round(train_s / 3600, 1),
            "validation_gpu_hours": round(val_s / 3600, 1), "eval_gpu_hours": round(eval_s / 3600, 2),
            "gpu_hours": round(total / 3600, 1),
            "note": "sum of epochs x measured seconds per epoch (batch 128) per job kind, plus per-epoch "
                    "validation (PGD RA at the measured fp32 test-evaluation rate) and the test evaluations; "
                    "factors for P3, ensembles and double backward in advss.bench.KIND_FACTOR; robustness "
                    "suites not included"}


def main(argv=None):
    import tempfile

    import yaml

    ap = argparse.ArgumentParser(prog="python -m advss.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config/config.yaml", help="its model, threat and optimiser; its protocol")
    ap.add_argument("--arch", help="override the config's model (e.g. resnet-tiny on a CPU)")
    ap.add_argument("--width", type=int)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--batches", type=int, default=200, help="timed batches per epoch of the pipeline loop")
    ap.add_argument("--ref-iters", type=int, default=20, help="timed steps of the reference and plain loops")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--eval-n", type=int, default=2048, help="test images for the evaluation timing")
    ap.add_argument("--concurrent", type=int, nargs="*", default=[1, 2, 4], help="jobs per GPU to measure")
    ap.add_argument("--fast", default="{}", help="JSON overrides of the config's fast settings")
    ap.add_argument("--check-steps", type=int, default=200, help="AT steps before the bf16/fp32 check")
    ap.add_argument("--check-n", type=int, default=2000)
    ap.add_argument("--work", help="scratch directory (default: a new temporary one)")
    ap.add_argument("--out", help="write the JSON record here")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child-id", default="0", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    cfg = yaml.safe_load(Path(a.config).read_text())
    cfg["model"] = {**cfg["model"], **({"arch": a.arch} if a.arch else {}), **({"width": a.width} if a.width else {})}
    fast = {**(cfg.get("fast") or {}), **json.loads(a.fast)}
    work = Path(a.work or tempfile.mkdtemp(prefix="advss-bench-"))
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "compile-cache"))  # children reuse the parent's
    if a.child:
        r = pipeline_speed(cfg, "at", a.batch_sizes[0], a.batches, fast, work / f"child{a.child_id}")
        print(json.dumps(r))
        return r

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_u8, y = D.make_procedural(100, seed=0)
    x_u8, y = x_u8.to(dev), y.to(dev)
    mcfg = cfg["model"]
    peak = matmul_peak(dev)
    flops = forward_flops(classifier(mcfg, 10).to(dev).eval(), dev)
    cost = {"st": 3 * flops, "at": 3 * flops * 11}  # backward ≈ 2× forward; PGD-10 = 10 fwd+bwd
    rec = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "model": mcfg, "config": a.config,
           "fast": fast, "batches": a.batches, "peak_tflops": round(peak, 1),
           "forward_gflop_per_image": round(flops / 1e9, 3), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
           "pipeline": {}}
    print(f"device {rec['device']}  torch {rec['torch']}  peak {peak:.1f} TFLOP/s  forward {flops / 1e9:.2f} GFLOP/image")
    print(f"{'loop':<34}{'batch':>6}{'img/s':>10}{'s/45k epoch':>13}{'peak %':>8}{'recompiles':>12}", flush=True)

    def line(name, bs, ips, mode, recompiles=""):
        print(f"{name:<34}{bs:>6}{ips:>10.0f}{EPOCH / ips:>13.1f}{100 * ips * cost[mode] / (peak * 1e12):>7.1f}%"
              f"{recompiles:>12}", flush=True)

    for bs in a.batch_sizes:
        for mode in ("at", "st"):
            r = pipeline_speed(cfg, mode, bs, a.batches, fast, work / "main")
            r["peak_fraction"] = round(r["img_s"] * cost[mode] / (peak * 1e12), 4)
            rec["pipeline"][f"{mode}-{bs}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
            line(f"pipeline (advss.train) {mode.upper()}", bs, r["img_s"], mode, str(r["recompiles"]))
    ref = run_reference(classifier(mcfg, 10).to(dev), x_u8, y, "at", Threat(steps=10), 128, a.ref_iters, dev, a.workers)
    plain = plain_bf16(mcfg, x_u8, y, 128, a.ref_iters, dev)
    line("reference-style (fp32, DataLoader) AT", 128, ref, "at")
    line("plain bf16 + channels-last eager AT", 128, plain, "at")
    at128 = rec["pipeline"].get("at-128", next(iter(rec["pipeline"].values())))
    rec["reference_at_128_img_s"], rec["plain_bf16_at_128_img_s"] = round(ref, 1), round(plain, 1)
    rec["speedup_vs_reference"] = round(at128["img_s"] / ref, 2)
    rec["speedup_vs_plain_bf16"] = round(at128["img_s"] / plain, 2)
    rec["eval_pgd20_img_s"] = round(eval_speed(cfg, fast, work / "main", a.eval_n), 1)
    print(f"pipeline AT: {rec['speedup_vs_reference']}x the reference loop, {rec['speedup_vs_plain_bf16']}x plain bf16; "
          f"test PGD-20 evaluation {rec['eval_pgd20_img_s']:.0f} img/s", flush=True)
    rec["recompiles_after_warmup"] = sum(v["recompiles"] for v in rec["pipeline"].values())
    if dev.type == "cuda" and a.concurrent:
        rec["concurrent"] = [concurrent(k, a, work) for k in a.concurrent]
        for c in rec["concurrent"]:
            print(f"{c['jobs']} concurrent AT jobs at batch {a.batch_sizes[0]}: {c['total_img_s']:.0f} img/s in total", flush=True)
    per_epoch = {m: rec["pipeline"][f"{m}-{a.batch_sizes[0]}"]["s_epoch_45k"] for m in ("at", "st")}
    rec["protocol_estimate"] = protocol_estimate(cfg, per_epoch, rec["eval_pgd20_img_s"])
    pe = rec["protocol_estimate"]
    print(f"{a.config}: {pe['training_jobs']} training + {pe['evaluation_jobs']} evaluation jobs ≈ "
          f"{pe['gpu_hours']} GPU-hours on this device (robustness suites not included)", flush=True)
    rec["numerical_check"] = numerical_check(mcfg, x_u8, y, dev, min(a.check_n, len(y)), a.check_steps, 256)
    c = rec["numerical_check"]
    print(f"PGD-20 RA fp32 {c['ra_fp32']:.2f}%  bf16 {c['ra_bf16']:.2f}%  |diff| {c['diff_pp']:.2f} pp on {c['n']} images")
    if a.out:
        from advss.io import write_json

        write_json(a.out, rec)
    return rec


if __name__ == "__main__":
    main()
