"""Benchmark: one AT epoch on the current device, fast path vs a reference-style loop.

    python -m advss.bench                      # ResNet-50, CIFAR-sized inputs, current device
    python -m advss.bench --arch resnet-tiny --width 8 --n 512 --iters 3   # a CPU smoke run

Prints, for standard training, PGD-10 AT and PGD-20 evaluation: images/s and seconds
per 45,000-image epoch for the fast path (data on the device, batched augmentation,
bf16 autocast, channels-last, torch.compile) and for a reference-style loop (fp32, CPU
DataLoader with torchvision transforms, a host-to-device copy per batch, no
compilation), their ratio, and the fraction of the measured bf16 matmul peak the fast
path reaches. Also checks that the fast path is the same method: PGD-20 RA of one
model in bf16 vs fp32. Writes everything as one JSON record (--out).
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from advss import data as D
from advss.attacks import Threat, pgd
from advss.models import classifier
from advss.train import autocast

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


def run_fast(model, x_u8, y, mode, threat, bs, iters, dev):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator(device=dev).manual_seed(0)

    def batch(i):
        idx = torch.randint(0, len(x_u8), (bs,), device=dev, generator=gen)
        xb = D.to_float(x_u8[idx]).contiguous(memory_format=torch.channels_last)
        return (D.augment(xb, gen) if mode != "eval" else xb), y[idx]

    for i in range(2):  # warm-up, compilation included
        _step(model, opt, *batch(i), mode, threat, gen, True)
    _sync(dev)
    t = time.perf_counter()
    for i in range(iters):
        _step(model, opt, *batch(i), mode, threat, gen, True)
    _sync(dev)
    return bs * iters / (time.perf_counter() - t)


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


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m advss.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--n", type=int, default=10_000, help="images held on the device")
    ap.add_argument("--batch", type=int, default=512, help="fast-path batch size")
    ap.add_argument("--ref-batch", type=int, default=128, help="reference loop batch size (the paper's)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--check-steps", type=int, default=200, help="AT steps before the bf16/fp32 check")
    ap.add_argument("--check-n", type=int, default=2000)
    ap.add_argument("--out", help="write the JSON record here")
    a = ap.parse_args(argv)

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x_u8, y = D.make_procedural(max(1, a.n // 10), seed=0)
    x_u8, y = x_u8.to(dev), y.to(dev)
    cfg = {"arch": a.arch, "width": a.width, "stem": "cifar"}
    peak = matmul_peak(dev)
    flops = forward_flops(classifier(cfg, 10).to(dev).eval(), dev)
    cost = {"st": 3 * flops, "at": 3 * flops * 11, "eval": 3 * flops * 20 + flops}  # backward ≈ 2× forward
    rec = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
           "torch": torch.__version__, "cuda": torch.version.cuda, "arch": a.arch, "width": a.width,
           "fast_batch": a.batch, "ref_batch": a.ref_batch, "iters": a.iters, "peak_tflops": round(peak, 1),
           "forward_gflop_per_image": round(flops / 1e9, 3), "compile": not a.no_compile and dev.type == "cuda",
           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "modes": {}}
    print(f"device {rec['device']}  torch {rec['torch']}  peak {peak:.1f} TFLOP/s  "
          f"forward {flops / 1e9:.2f} GFLOP/image")
    print(f"{'mode':<6}{'fast img/s':>12}{'ref img/s':>12}{'fast s/epoch':>14}{'ref s/epoch':>13}{'ratio':>8}{'peak %':>8}")
    for mode in ("st", "at", "eval"):
        threat = Threat(steps=10 if mode == "at" else 20)
        fm = classifier(cfg, 10).to(dev, memory_format=torch.channels_last)
        if rec["compile"]:
            fm.forward = torch.compile(fm.forward)
        fast = run_fast(fm, x_u8, y, mode, threat, a.batch, a.iters, dev)
        ref = run_reference(classifier(cfg, 10).to(dev), x_u8, y, mode, threat, a.ref_batch, a.iters, dev, a.workers)
        frac = fast * cost[mode] / (peak * 1e12)
        rec["modes"][mode] = {"fast_img_s": round(fast, 1), "ref_img_s": round(ref, 1),
                              "fast_s_epoch": round(EPOCH / fast, 2), "ref_s_epoch": round(EPOCH / ref, 2),
                              "ratio": round(fast / ref, 2), "peak_fraction": round(frac, 4)}
        m = rec["modes"][mode]
        print(f"{mode:<6}{fast:>12.0f}{ref:>12.0f}{m['fast_s_epoch']:>14.1f}{m['ref_s_epoch']:>13.1f}"
              f"{m['ratio']:>8.1f}{100 * frac:>7.1f}%", flush=True)
    rec["numerical_check"] = numerical_check(cfg, x_u8, y, dev, min(a.check_n, len(y)), a.check_steps, min(a.batch, 256))
    c = rec["numerical_check"]
    print(f"PGD-20 RA fp32 {c['ra_fp32']:.2f}%  bf16 {c['ra_bf16']:.2f}%  |diff| {c['diff_pp']:.2f} pp on {c['n']} images")
    if a.out:
        from advss.io import write_json

        write_json(a.out, rec)
    return rec


if __name__ == "__main__":
    main()
