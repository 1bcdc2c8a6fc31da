"""The per-batch training step (objective, backward, SGD update) and its CUDA-graph runner.

Why a runner: at the paper's batch of 128 a ResNet-50 PGD-10 AT step is bound by kernel
launches and Python, not by the GPU's arithmetic (`../shared/design/gpu.md`: bf16 gains
nothing over fp32 there, and throughput doubles from batch 128 to 256). Replaying the
whole step, the 10 PGD iterations included, as one CUDA graph removes that cost. A graph
replays fixed kernels on fixed memory, so the step is written for it:

  * shapes are static (the loop drops the last partial batch);
  * inputs arrive through static buffers the runner copies each batch into;
  * the step's random draws (PGD's random start, smoothing/TRADES noise) go through a
    `Draws` object: eager steps draw from the batch's generator and record the shapes;
    a captured graph reads static buffers that the runner refills, before each replay,
    from that batch's generator in the same order, so a replay consumes exactly the
    numbers an eager step would have drawn;
  * the learning rate is a 0-d tensor and the SGD update is written with foreach ops
    (`torch.optim.SGD` turns a tensor lr into a Python float, a host sync), on the same
    momentum buffers `torch.optim.SGD` keeps, so resume files are unchanged;
  * nothing in the step reads a value back to the host or copies host data in (the
    guard, `advss.graphguard`, checks every op of the warm-up steps after the first).

The same step function runs eagerly on a CPU and wherever graphs are off, so the CPU
tests exercise it; `advss.standin.FakeGraph` stands in for capture on a CPU (a guarded
capture that leaves no trace and records its ops, then replays of the step's Python that
must issue the same ops) to test the runner's buffer plumbing (inputs, draws, lr), its
failure paths and its replay check (`advss.replaycheck`) without CUDA; `advss.capture`
captures on CUDA and undoes a capture that failed.
"""
from __future__ import annotations

import contextlib

import torch

from advss.graphguard import describe  # noqa: F401 - the runner's one-line errors, re-exported


# ------------------------------------------------------------------ draws
class Draws:
    """The random numbers of one step, drawn in call order.

    mode 'eager': draw from `gen`, remember (kind, shape);
    mode 'static': hand out the pre-allocated buffers in order (inside a graph);
    `refill(gen)` redraws every buffer from a new generator, in the recorded order.
    """

    def __init__(self, gen=None):
        self.gen, self.mode, self.record, self.buffers, self.i = gen, "eager", [], [], 0

    def _draw(self, kind, shape, device):
        if self.mode == "static":
            k, buf = self.buffers[self.i]
            if k != kind or tuple(buf.shape) != tuple(shape):
                raise RuntimeError(f"a captured step drew {kind}{tuple(shape)} where the warm-up drew "
                                   f"{k}{tuple(buf.shape)}: the step is not static")
            self.i += 1
            return buf
        fn = torch.rand if kind == "rand" else torch.randn
        gdev = self.gen.device if self.gen is not None else device
        out = fn(tuple(shape), generator=self.gen, device=gdev).to(device)
        self.record.append((kind, tuple(shape), device))
        return out

    def rand(self, shape, device):
        return self._draw("rand", shape, device)

    def randn(self, shape, device):
        return self._draw("randn", shape, device)

    def start(self, gen):
        """Begin a new step whose draws come from `gen` (eager mode)."""
        self.gen, self.record, self.i = gen, [], 0
        return self

    def make_static(self):
        """Allocate one buffer per draw the last eager step made; later steps read them."""
        self.buffers = [(k, torch.empty(s, device=d)) for k, s, d in self.record]
        self.mode, self.i = "static", 0

    def refill(self, gen):
        self.i = 0
        for kind, buf in self.buffers:
            fn = torch.rand if kind == "rand" else torch.randn
            buf.copy_(fn(tuple(buf.shape), generator=gen, device=gen.device))


def rand_like(x: torch.Tensor, gen) -> torch.Tensor:
    """Uniform [0,1) noise shaped like x from a torch.Generator (or None) or a `Draws`."""
    if isinstance(gen, Draws):
        return gen.rand(x.shape, x.device)
    return torch.rand(x.shape, generator=gen, device=gen.device if gen is not None else x.device).to(x.device)


def randn_like(x: torch.Tensor, gen) -> torch.Tensor:
    if isinstance(gen, Draws):
        return gen.randn(x.shape, x.device)
    return torch.randn(x.shape, generator=gen, device=gen.device if gen is not None else x.device).to(x.device)


def rand_n(n: int, like: torch.Tensor, gen) -> torch.Tensor:
    """n uniform draws (one per example), e.g. the radius of an L2 random start."""
    return rand_like(like.new_empty(n), gen)


# ------------------------------------------------------------------ SGD
def init_momentum(opt: torch.optim.SGD):
    """Zero momentum buffers up front: buf = 0·m + d_p equals torch's first-step
    buf = d_p, and the buffers exist before a graph is captured."""
    for g in opt.param_groups:
        if g["momentum"] and g.get("dampening", 0) == 0:
            for p in g["params"]:
                st = opt.state[p]
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


@torch.no_grad()
def sgd_update(opt: torch.optim.SGD, lr: torch.Tensor):
    """torch.optim.SGD's update (momentum, weight decay, Nesterov; dampening 0) with a
    tensor learning rate, in foreach ops that a CUDA graph can hold."""
    for g in opt.param_groups:
        ps = [p for p in g["params"] if p.grad is not None]
        if not ps:
            continue
        grads = [p.grad for p in ps]
        if g.get("dampening", 0) != 0 or g.get("maximize", False):
            raise ValueError("advss's SGD step supports dampening 0 and maximize False only")
        wd, mom = g["weight_decay"], g["momentum"]
        d = torch._foreach_add(grads, ps, alpha=wd) if wd else list(grads)
        if g.get("lars_eta"):  # the group asks for LARS (optim.optimizer: lars)
            _lars(opt, ps, grads, d, lr, g["lars_eta"], wd, mom)
            continue
        if mom:
            bufs = [opt.state[p]["momentum_buffer"] for p in ps]
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, d)
            d = torch._foreach_add(d, bufs, alpha=mom) if g.get("nesterov") else bufs
        torch._foreach_sub_(ps, torch._foreach_mul(d, lr))


def _lars(opt, ps, grads, d, lr, eta, wd, mom):
    """LARS (You et al. 2017) as ACL's reference code (optimizer/lars.py) computes it, for every
    parameter: local lr η·‖w‖ / (‖g‖ + wd·‖w‖) (1 where either norm is below 1e-15),
    buf = m·buf + lr·local·(g + wd·w), w −= buf (the learning rate inside the momentum).
    Norms and the local rate stay on the device (no host sync)."""
    w_norm, g_norm = torch._foreach_norm(ps), torch._foreach_norm(grads)
    for p, step, wn, gn in zip(ps, d, w_norm, g_norm):
        local = torch.where((wn < 1e-15) | (gn < 1e-15), torch.ones_like(wn), eta * wn / (gn + wd * wn))
        buf = opt.state[p]["momentum_buffer"]
        buf.mul_(mom).add_(step * (local * lr))
        p.sub_(buf)


# ------------------------------------------------------------------ the step
def train_step(model, task, objective, obj_cfg, threat, opt, bf16, inputs, targets, draws, lr):
    """One optimisation step; returns the detached loss and logits (no host sync).
    `functools.partial` of the first seven arguments is what `StepRunner` calls."""
    with torch.autocast(device_type=inputs.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, logits = objective(model, task, inputs, targets, draws, obj_cfg, threat)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sgd_update(opt, lr)
    return loss.detach(), logits.detach()


# ------------------------------------------------------------------ the runner
class _Snapshot:
    """Everything a step mutates, by name (`replaycheck.state_names`: parameters, buffers
    such as BatchNorm's statistics, momentum), the batch generator and the default
    generators (dropout). Taken around capture, so that a failed capture, a failed first
    replay or the replay check leaves exactly the state an eager run would have."""

    def __init__(self, named: dict, gen, dev):
        with torch.no_grad():
            self.saved = {k: t.detach().clone() for k, t in named.items()}
        self.named, self.gen, self.dev = named, gen, dev
        self.gen_state = gen.get_state() if gen is not None else None
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None

    @torch.no_grad()
    def restore(self):
        for k, t in self.named.items():
            t.detach().copy_(self.saved[k])
        self.restore_rng()

    def restore_rng(self):
        if self.gen is not None:
            self.gen.set_state(self.gen_state)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.dev)


class StepRunner:
    """Calls `step(inputs, targets, draws, lr)` for each batch: eagerly, or as a CUDA graph
    (or its CPU stand-in, `advss.standin.FakeGraph`) captured after `warmup` eager steps.

      warm-up   real training steps, on a side stream as CUDA requires; all but the first
                (which compiles) under the guard (`advss.graphguard`: host reads and host
                data by name, torch's sync-debug mode, no recompiles);
      capture   with no recompiles (`advss.capture.cuda_capture`; the stand-in's capture
                is also guarded), then the same batch replayed;
      check     the batch run again eagerly from the same snapshot: what the replay must
                equal is `advss.replaycheck`'s; a mismatch drops the graph.

    `mode` says which path really ran: 'off' (graphs not requested), 'warm-up' (not yet
    captured), 'captured' or 'fallback: <reason>'. Any failure falls back to eager with the
    state an eager run would have (the default generator's capture flag reset included),
    and says why in the log, once."""

    def __init__(self, step, device, graphs: str = "off", warmup: int = 3, log=print, model=None, opt=None,
                 precision: str = "fp32"):
        if graphs not in ("off", "cuda", "fake"):
            raise ValueError(f"graphs must be off, cuda or fake, not {graphs!r}")
        self.step, self.dev, self.graphs, self.warmup, self.log = step, torch.device(device), graphs, warmup, log
        self.model, self.opt, self.precision = model, opt, precision
        self.lr = torch.zeros((), device=device)
        self.draws = Draws()
        self.calls = 0
        self.graph = None
        self.static = None  # (inputs, targets) buffers
        self.out = None
        self.mode = "off" if graphs == "off" else "warm-up"
        self.check = None  # the replay check's figures
        self.logged_mode = None  # the mode the job log last reported (train.run_epoch)

    @property
    def captured(self) -> bool:
        return self.mode == "captured"

    @property
    def steady(self) -> bool:
        """No more warm-up, capture or check work to come: batches from here are timed."""
        return self.mode != "warm-up"

    def _state(self) -> dict:
        from advss.replaycheck import state_names

        if self.model is None:
            return {}
        named = state_names(self.model, self.opt)
        seen = {id(t) for t in named.values()}
        if self.opt is not None:  # any other optimiser state
            for i, st in enumerate(self.opt.state.values()):
                named.update({f"opt:{i}:{k}": v for k, v in st.items() if torch.is_tensor(v) and id(v) not in seen})
        return named

    def _eager(self, inputs, targets, gen):
        return self.step(inputs, targets, Draws().start(gen), self.lr)

    def __call__(self, inputs, targets, gen, lr: float):
        self.lr.fill_(lr)
        if self.mode == "off" or self.mode.startswith("fallback"):
            return self._eager(inputs, targets, gen)
        if self.static is None:
            self.static = (torch.empty_like(inputs), torch.empty_like(targets))
        si, st = self.static
        if inputs.shape != si.shape or targets.shape != st.shape:  # a shape the graph does not hold
            return self._eager(inputs, targets, gen)
        si.copy_(inputs)
        st.copy_(targets)
        self.calls += 1
        if self.captured:
            self.draws.refill(gen)
            self.graph.replay()
            return self.out
        if self.calls <= self.warmup:
            return self._warmup_step(si, st, gen)
        return self._capture_and_check(si, st, gen)

    def _fallback(self, reason, snap, si, st):
        """Drop the graph, put back the state an eager run would have, run this batch eagerly."""
        self.graph, self.draws, self.mode = None, Draws(), f"fallback: {reason}"
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        snap.restore()
        self._generator_usable(snap)
        self.log(f"CUDA graphs off for the rest of this job: {reason}; it continues eagerly"
                 if self.graphs == "cuda" else f"graph stand-in off for the rest of this job: {reason}")
        return self._eager(si, st, snap.gen)

    def _generator_usable(self, snap):
        """A capture that failed in cudaStreamEndCapture can leave the default generator
        marked as capturing (`advss.capture`): reset it, restore its seed and offset, and
        draw once to see (then restore again, so that dropout draws what an eager run does)."""
        from advss import capture

        gen = capture.default_generator(self.dev)
        capture.reset_generator(gen, self.dev)
        snap.restore_rng()
        try:
            capture.draw(gen, self.dev)
        except RuntimeError as e:
            raise RuntimeError("the default CUDA generator is unusable after a failed CUDA-graph capture "
                               f"({describe(e)}); rerun this job with fast.cuda_graphs: false") from e
        snap.restore_rng()

    def _warmup_step(self, si, st, gen):
        from advss import graphguard

        if self.calls == 1:  # compiles; inductor's autotuning synchronises
            with _side_stream(self.dev, self.graphs == "cuda"):
                return self.step(si, st, self.draws.start(gen), self.lr)
        snap = _Snapshot(self._state(), gen, self.dev)
        try:
            with _side_stream(self.dev, self.graphs == "cuda"), graphguard.guarded(self.dev):
                return self.step(si, st, self.draws.start(gen), self.lr)
        except Exception as e:  # noqa: BLE001 - named by graphguard.reason; a real bug recurs eagerly
            return self._fallback(graphguard.reason(e, f"warm-up step {self.calls}"), snap, si, st)

    def _capture_and_check(self, si, st, gen):
        from advss import capture, graphguard, standin

        self.draws.make_static()
        snap = _Snapshot(self._state(), gen, self.dev)
        fn = lambda: self.step(si, st, self.draws, self.lr)  # noqa: E731
        where = "capture"
        try:
            self.draws.refill(gen)
            with graphguard.no_recompile():
                if self.graphs == "cuda":
                    self.graph, self.out = capture.cuda_capture(fn, self.dev)
                else:
                    self.graph = standin.FakeGraph(undo=snap.restore)
                    self.out = self.graph.capture(fn)
            where = "first replay"
            snap.restore()             # nothing of the capture persists (CUDA ran no kernel)
            self.draws.refill(gen)     # the same draws an eager step takes from this batch
            self.graph.replay()
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
        except Exception as e:  # noqa: BLE001 - any capture or first-replay failure falls back, visibly
            return self._fallback(graphguard.reason(e, where), snap, si, st)
        return self._check(snap, si, st)

    def _check(self, snap, si, st):
        """Run the replayed batch once more eagerly from the same snapshot and compare
        (`advss.replaycheck`: what a replay must equal)."""
        from advss import replaycheck

        graph = replaycheck.Outcome(self.out[0], self.model, self.opt, snap.saved)
        snap.restore()
        out = self.step(si, st, Draws().start(snap.gen), self.lr)
        eager = replaycheck.Outcome(out[0], self.model, self.opt, snap.saved)
        self.check = replaycheck.compare(graph, eager, self.precision)
        figures = replaycheck.summary(self.check)
        if not self.check["passed"]:
            self.graph, self.draws = None, Draws()
            self.mode = f"fallback: replay mismatch ({self.check['worst']}, tolerance {self.check['rtol']:g})"
            self.log(f"the captured step disagrees with the eager step: {figures}; the graph is dropped and "
                     "this job continues eagerly from the eager step's state")
            return out
        self.mode = "captured"
        self.log(f"captured the training step as a {'CUDA' if self.graphs == 'cuda' else 'stand-in (CPU)'} graph "
                 f"after {self.warmup} eager warm-up steps; replay check: {figures}")
        return out


@contextlib.contextmanager
def _side_stream(dev, on: bool):
    """CUDA's warm-up steps run on a side stream, joined after (`on` False: nothing)."""
    if not on:
        yield
        return
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))
    try:
        with torch.cuda.stream(s):
            yield
    finally:
        torch.cuda.current_stream(dev).wait_stream(s)
