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
tests exercise it; `FakeGraph` replays the step's Python on a CPU to test the runner's
buffer plumbing (inputs, draws, lr) without CUDA.
"""
from __future__ import annotations

import contextlib

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
        if mom:
            bufs = [opt.state[p]["momentum_buffer"] for p in ps]
            torch._foreach_mul_(bufs, mom)
            torch._foreach_add_(bufs, d)
            d = torch._foreach_add(d, bufs, alpha=mom) if g.get("nesterov") else bufs
        torch._foreach_sub_(ps, torch._foreach_mul(d, lr))


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
class FakeGraph:
    """A CPU stand-in for torch.cuda.CUDAGraph: `capture` records the step's Python,
    `replay` runs it again on the same static buffers. It tests the runner's plumbing
    (static inputs, refilled draws, the lr tensor); only CUDA removes launch cost."""

    def __init__(self):
        self.fn = None

    def capture(self, fn):
        self.fn = fn
        return fn()  # FakeGraph runs at capture; the runner does not replay it again

    def replay(self):
        return self.fn()


class StepRunner:
    """Calls `step(inputs, targets, draws, lr)` for each batch: eagerly, or as a CUDA
    graph captured after `warmup` eager steps (which are real training steps, run on
    a side stream as CUDA requires). If capture fails the runner says so in the log
    and stays eager: the job finishes either way."""

    def __init__(self, step, device, graphs: str = "off", warmup: int = 3, log=print):
        if graphs not in ("off", "cuda", "fake"):
            raise ValueError(f"graphs must be off, cuda or fake, not {graphs!r}")
        self.step, self.dev, self.graphs, self.warmup, self.log = step, device, graphs, warmup, log
        self.lr = torch.zeros((), device=device)
        self.draws = Draws()
        self.calls = 0
        self.graph = None
        self.static = None  # (inputs, targets) buffers
        self.out = None
        self.captured = False

    def __call__(self, inputs, targets, gen, lr: float):
        self.lr.fill_(lr)
        if self.graphs == "off":
            return self.step(inputs, targets, self.draws.start(gen), self.lr)
        if self.static is None:
            self.static = (torch.empty_like(inputs), torch.empty_like(targets))
        si, st = self.static
        if inputs.shape != si.shape or targets.shape != st.shape:  # a shape the graph does not hold
            return self.step(inputs, targets, Draws(gen), self.lr)
        si.copy_(inputs)
        st.copy_(targets)
        self.calls += 1
        if self.captured:
            self.draws.refill(gen)
            self._replay()
            return self.out
        if self.calls <= self.warmup:
            with self._side_stream():
                return self.step(si, st, self.draws.start(gen), self.lr)
        return self._capture(gen)

    @contextlib.contextmanager
    def _side_stream(self):
        if self.graphs != "cuda":
            yield
            return
        s = torch.cuda.Stream(self.dev)
        s.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(s):
            yield
        torch.cuda.current_stream(self.dev).wait_stream(s)

    def _capture(self, gen):
        si, st = self.static
        self.draws.make_static()
        self.draws.refill(gen)
        try:
            if self.graphs == "cuda":
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):
                    self.out = self.step(si, st, self.draws, self.lr)
                self.graph.replay()  # capture records only: run this batch now
            else:
                self.graph = FakeGraph()
                self.out = self.graph.capture(lambda: self.step(si, st, self.draws, self.lr))
        except Exception as e:  # noqa: BLE001 - any capture failure falls back to eager, visibly
            self.log(f"CUDA graph capture failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     "this job continues without CUDA graphs")
            self.graphs, self.graph, self.draws = "off", None, Draws()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            return self.step(si, st, self.draws.start(gen), self.lr)
        self.captured = True
        self.log(f"captured the training step as a {'CUDA' if self.graphs == 'cuda' else 'fake (CPU)'} graph "
                 f"after {self.warmup} eager warm-up steps")
        return self.out

    def _replay(self):
        if self.graphs == "cuda":
            self.graph.replay()
        else:
            self.out = self.graph.replay()
