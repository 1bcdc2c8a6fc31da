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
  * nothing in the step reads a value back to the host.

The same step function runs eagerly on a CPU and wherever graphs are off, so the CPU
tests exercise it; `FakeGraph` stands in for capture on a CPU (a capture that leaves no
trace, then replays of the step's Python) to test the runner's buffer plumbing (inputs,
draws, lr), its failure paths and its replay check without CUDA.
"""
from __future__ import annotations

import torch


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
def describe(e: BaseException) -> str:
    """One line for the log: the exception's first line (its repr when the message is
    empty), and the error it was raised while handling, which is where CUDA's generic
    "operation failed due to a previous error during capture" keeps the real cause."""
    def one(x):
        first = str(x).strip().splitlines()
        return f"{type(x).__name__}: {first[0][:200]}" if first else repr(x)

    ctx = e.__cause__ or e.__context__
    return one(e) + (f" (while handling {one(ctx)})" if ctx is not None else "")


class _Snapshot:
    """Everything a step mutates: parameters, buffers (BatchNorm statistics), optimiser
    state (momentum), the batch generator and the default generators (dropout). Taken
    once per job around capture, so that a failed capture, a failed first replay or the
    replay check leaves exactly the state an eager run would have."""

    def __init__(self, tensors, gen, dev):
        with torch.no_grad():
            self.saved = [t.detach().clone() for t in tensors]
        self.tensors, self.gen, self.dev = tensors, gen, dev
        self.gen_state = gen.get_state() if gen is not None else None
        self.cpu_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None

    @torch.no_grad()
    def restore(self):
        for t, s in zip(self.tensors, self.saved):
            t.detach().copy_(s)
        self.restore_rng()

    def restore_rng(self):
        if self.gen is not None:
            self.gen.set_state(self.gen_state)
        torch.set_rng_state(self.cpu_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state(self.cuda_rng, self.dev)


class FakeGraph:
    """A CPU stand-in for a CUDA graph, as strict about state as capture is: `capture`
    runs the step and then undoes everything it changed (CUDA capture executes no kernel,
    so nothing persists), and `replay` runs the step's Python again on the same static
    buffers. It cannot freeze host values the way a real graph does; that is what the
    on-device replay check of `StepRunner` is for.

    `fail=(where, message, halfway)` injects a failure for the tests: at 'capture' or at
    the first 'replay', with that message ('' for an empty one), raised before the step
    runs or, with halfway, after it has changed weights, BN statistics and momentum."""

    def __init__(self, undo=None, fail=None):
        self.fn, self.undo, self.fail, self.replays = None, undo, fail, 0

    def _maybe_fail(self, where, fn):
        if not self.fail or self.fail[0] != where or (where == "replay" and self.replays > 1):
            return fn()
        _, message, halfway = self.fail
        if halfway:  # the step's forward passes, BN updates, backward and SGD update all ran
            fn()
        raise RuntimeError(message)

    def capture(self, fn):
        self.fn = fn
        self._maybe_fail("capture", fn)
        if self.undo is not None:
            self.undo()

    def replay(self):
        self.replays += 1
        return self._maybe_fail("replay", self.fn)


_FakeGraphBase = FakeGraph  # the class itself; `FakeGraph` is what the runner builds (tests replace it)


def _cuda_capture(graph, fn, dev):
    """torch.cuda.graph's capture without its trap: its __exit__ calls capture_end()
    before leaving the stream context, so a failing capture_end left the job on the
    capture stream. Here the stream context always exits, and a step that raises still
    ends the capture (its own error stays the one reported)."""
    import gc

    torch.cuda.synchronize(dev)
    gc.collect()
    torch.cuda.empty_cache()
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        graph.capture_begin()
        try:
            out = fn()
        except BaseException:
            try:
                graph.capture_end()
            except Exception:  # noqa: BLE001 - the step's error is the cause, raised below
                pass
            raise
        graph.capture_end()
    torch.cuda.current_stream(dev).wait_stream(side)
    return out


# Replay check tolerances (bf16 autocast and cuDNN's algorithm choice make a replay differ
# from an eager step in the last bits, not in direction): the loss to 1e-2 relative, and
# the parameter update of the two runs at a cosine of at least 0.99.
REPLAY_LOSS_RTOL = 1e-2
REPLAY_MIN_COSINE = 0.99


class StepRunner:
    """Calls `step(inputs, targets, draws, lr)` for each batch: eagerly, or as a CUDA
    graph captured after `warmup` eager steps (real training steps, run on a side stream
    as CUDA requires; on CUDA all but the first, which compiles, run with
    `torch.cuda.set_sync_debug_mode("error")` so that a hidden host sync surfaces before
    capture). The batch after capture is replayed, then run again eagerly from the same
    snapshot with the same draws: if loss or update disagree, the graph is dropped.

    `mode` says which path really ran: 'off' (graphs not requested), 'warm-up' (not yet
    captured), 'captured' or 'fallback: <reason>'. Any failure falls back to eager with
    the state an eager run would have, and says why in the log, once."""

    def __init__(self, step, device, graphs: str = "off", warmup: int = 3, log=print, model=None, opt=None):
        if graphs not in ("off", "cuda", "fake"):
            raise ValueError(f"graphs must be off, cuda or fake, not {graphs!r}")
        self.step, self.dev, self.graphs, self.warmup, self.log = step, torch.device(device), graphs, warmup, log
        self.model, self.opt = model, opt
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

    def _tensors(self):
        ts = []
        if self.model is not None:
            ts += list(self.model.parameters()) + list(self.model.buffers())
        if self.opt is not None:
            ts += [v for st in self.opt.state.values() for v in st.values() if torch.is_tensor(v)]
        return ts

    def _params(self):
        if self.opt is not None:
            return [p for g in self.opt.param_groups for p in g["params"]]
        return list(self.model.parameters()) if self.model is not None else []

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
            self._replay()
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
        self._generators_usable(snap)
        self.log(f"CUDA graphs off for the rest of this job: {reason}; it continues eagerly"
                 if self.graphs == "cuda" else f"graph stand-in off for the rest of this job: {reason}")
        return self._eager(si, st, snap.gen)

    def _generators_usable(self, snap):
        """A capture that failed in cudaStreamEndCapture skips torch's capture epilogue and
        can leave the default CUDA generator marked as capturing: the next dropout would fail.
        Draw once to see; restore its state once; otherwise stop with a clear error."""
        if self.dev.type != "cuda":
            return
        for attempt in range(2):
            try:
                torch.rand(1, device=self.dev)
                return
            except RuntimeError as e:
                if attempt:
                    raise RuntimeError("the default CUDA generator is unusable after a failed CUDA-graph capture "
                                       f"({describe(e)}); rerun this job with fast.cuda_graphs: false") from e
                snap.restore_rng()

    def _warmup_step(self, si, st, gen):
        if self.graphs != "cuda":
            return self.step(si, st, self.draws.start(gen), self.lr)
        s = torch.cuda.Stream(self.dev)
        s.wait_stream(torch.cuda.current_stream(self.dev))
        guard = self.calls > 1  # the first step compiles, and inductor's autotuning synchronises
        snap = _Snapshot(self._tensors(), gen, self.dev) if guard else None
        prev, err = torch.cuda.get_sync_debug_mode(), None
        try:
            with torch.cuda.stream(s):
                if guard:
                    torch.cuda.set_sync_debug_mode("error")
                out = self.step(si, st, self.draws.start(gen), self.lr)
        except RuntimeError as e:
            if not guard:
                raise
            err = e
        finally:
            torch.cuda.set_sync_debug_mode(prev)
            torch.cuda.current_stream(self.dev).wait_stream(s)
        if err is not None:
            return self._fallback(f"host sync in the step ({describe(err)})", snap, si, st)
        return out

    def _capture_and_check(self, si, st, gen):
        self.draws.make_static()
        snap = _Snapshot(self._tensors(), gen, self.dev)
        fn = lambda: self.step(si, st, self.draws, self.lr)  # noqa: E731
        try:
            self.draws.refill(gen)
            if self.graphs == "cuda":
                self.graph = torch.cuda.CUDAGraph()
                self.out = _cuda_capture(self.graph, fn, self.dev)
            else:
                self.graph = FakeGraph(undo=snap.restore)
                self.graph.capture(fn)
            snap.restore()             # nothing of the capture persists (CUDA ran no kernel)
            self.draws.refill(gen)     # the same draws an eager step takes from this batch
            self._replay()
            if self.dev.type == "cuda":
                torch.cuda.synchronize(self.dev)
        except Exception as e:  # noqa: BLE001 - any capture or first-replay failure falls back, visibly
            return self._fallback(f"capture failed: {describe(e)}", snap, si, st)
        return self._check(snap, si, st)

    def _check(self, snap, si, st):
        """Run the replayed batch once more eagerly from the same snapshot and compare."""
        params = self._params()
        before = {id(t): s for t, s in zip(snap.tensors, snap.saved)}
        def update():  # every parameter's change since the snapshot, as one float64 vector
            return torch.cat([(p.detach() - before[id(p)]).double().flatten() for p in params]
                             + [torch.zeros(0, dtype=torch.float64, device=self.dev)])

        with torch.no_grad():
            g_loss = self.out[0].detach().double().sum()  # the step's scalar loss
            g_delta = update()
        snap.restore()
        out = self.step(si, st, Draws().start(snap.gen), self.lr)
        with torch.no_grad():
            e_loss = out[0].detach().double().sum()
            e_delta = update()
            ng, ne = g_delta.norm(), e_delta.norm()
            cos = 1.0 if float(ng) == 0 and float(ne) == 0 else float(g_delta @ e_delta / (ng * ne).clamp_min(1e-300))
            rel = float((g_loss - e_loss).abs() / e_loss.abs().clamp_min(1e-12))
        self.check = {"loss_graph": float(g_loss), "loss_eager": float(e_loss), "loss_rel_diff": rel,
                      "update_cosine": cos, "loss_rtol": REPLAY_LOSS_RTOL, "min_cosine": REPLAY_MIN_COSINE}
        figures = f"loss {float(g_loss):.6g} vs eager {float(e_loss):.6g} (rel {rel:.1e}), update cosine {cos:.6f}"
        if not (rel <= REPLAY_LOSS_RTOL and cos >= REPLAY_MIN_COSINE):  # NaN fails too
            self.graph, self.draws, self.mode = None, Draws(), f"fallback: replay mismatch ({figures})"
            self.log(f"the captured step disagrees with the eager step: {figures}; the graph is dropped and "
                     "this job continues eagerly from the eager step's state")
            return out
        self.mode = "captured"
        self.log(f"captured the training step as a {'CUDA' if self.graphs == 'cuda' else 'fake (CPU)'} graph "
                 f"after {self.warmup} eager warm-up steps; replay check: {figures}")
        return out

    def _replay(self):
        if self.graphs == "cuda":
            self.graph.replay()
        else:
            self.out = self.graph.replay()
