"""The guard, the CPU stand-in and the capture clean-up (issue 23): what a CUDA graph cannot
hold is caught by name before capture, on a CPU as on a GPU."""
import pytest
import torch

from advss import capture, gpucheck, graphguard, standin
from advss.step import Draws, StepRunner, init_momentum, sgd_update
from conftest import ROOT, TINY_MODEL


def _runner(step, warmup=2, **kw):
    logs = []
    return StepRunner(step, torch.device("cpu"), "fake", warmup=warmup, log=logs.append, **kw), logs


def _drive(r, n=5, shape=(4, 3)):
    x, y = torch.arange(12.0).view(shape) - 5, torch.zeros(shape[0])
    return [r(x, y, torch.Generator().manual_seed(i), lr=0.1) for i in range(n)]


@pytest.mark.parametrize("body,op,what", [
    (lambda x, lr: x[x > 0].sum(), "aten::index", "boolean-mask"),
    (lambda x, lr: x.nonzero().sum(), "aten::nonzero", "nonzero"),
    (lambda x, lr: x * float(lr), "aten::_local_scalar_dense", ".item()"),
    (lambda x, lr: x * x.new_tensor([1.0, 2.0, 3.0]), "aten::lift_fresh", "host data"),
    (lambda x, lr: x.masked_select(x > 0).sum(), "aten::masked_select", "masked_select"),
])
def test_the_guard_names_the_op_it_caught(body, op, what):
    """A step with a host read or host data falls back at the first guarded warm-up step
    (the second: the first compiles), and the reason names the op."""
    def step(x, y, draws, lr):
        return body(x, lr).sum().reshape(()), y

    r, logs = _runner(step)
    outs = _drive(r)
    assert r.mode.startswith(f"fallback: {op} in the step (warm-up step 2)"), r.mode
    assert what in r.mode
    assert sum("stand-in off" in m for m in logs) == 1
    x = torch.arange(12.0).view(4, 3) - 5
    assert all(torch.equal(o[0], body(x, torch.tensor(0.1)).sum()) for o in outs)  # and the job ran on, eagerly


def test_the_guard_sees_the_backward_pass_and_out_of_memory_is_named():
    seen = []

    def hook_step(x, y, draws, lr):
        w = x.clone().requires_grad_(True)
        w.register_hook(lambda g: g * float(g.sum()))  # a host read inside backward
        (w * 2).sum().backward()
        return w.grad.sum().reshape(()), y

    r, _ = _runner(hook_step)
    _drive(r)
    assert r.mode.startswith("fallback: aten::_local_scalar_dense in the step"), r.mode

    def oom_step(x, y, draws, lr):
        seen.append(1)
        if len(seen) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x.sum().reshape(()), y

    r, _ = _runner(oom_step)
    _drive(r)
    assert r.mode.startswith("fallback: out of memory (warm-up step 2)"), r.mode
    assert "host sync" not in r.mode


def test_a_stand_in_replay_that_issues_something_else_fails():
    """The stand-in freezes non-tensor arguments as a graph does: a Python value that
    changes between capture and replay is a mismatch, not a silently different replay."""
    scale = [1.0]

    def step(x, y, draws, lr):
        scale[0] += 1.0  # a host value the step reads afresh each time (a graph would keep the first)
        return (x * scale[0]).sum().reshape(()), y

    r, _ = _runner(step)
    _drive(r)
    assert r.mode.startswith("fallback: first replay failed: StandInMismatch"), r.mode
    assert "aten.mul.Tensor(float32[4, 3], 5.0)" in r.mode and "4.0" in r.mode


def test_stand_in_writes_replays_into_the_capture_outputs():
    def step(x, y, draws, lr):
        return draws.rand(x.shape, x.device) * lr, y

    r, _ = _runner(step, warmup=1)
    x, y = torch.zeros(4, 3), torch.zeros(4)
    replayed = []
    for seed in range(5):
        was_captured = r.captured
        out, _ = r(x, y, torch.Generator().manual_seed(seed), lr=2.0)
        if was_captured:
            replayed.append(out)
        assert torch.equal(out, torch.rand(4, 3, generator=torch.Generator().manual_seed(seed)) * 2.0)
    assert r.captured and len(replayed) == 3
    assert all(o is r.out[0] for o in replayed)  # the capture-time tensor, refilled by each replay


def test_generator_capture_flag_is_reset_after_a_capture_that_did_not_end():
    """torch 2.11's default CUDA generator, as the stand-in models it: a capture whose end
    failed leaves it capturing, set_state does not help, the state swap does."""
    g = standin.RNG()
    g.capture_prologue()
    with pytest.raises(RuntimeError, match="Offset increment outside graph capture"):
        g.draw()
    capture.reset_generator(g, torch.device("cpu"))
    g.draw()
    shared = g.graphsafe_get_state()
    assert shared.state is g.state  # graphsafe_get_state shares the state, as CUDAGeneratorImpl does


def test_without_the_reset_a_capture_that_did_not_end_stops_the_job(monkeypatch):
    """The runner's reset is what keeps a job alive after cudaStreamEndCapture failed."""
    base = standin.FakeGraph
    monkeypatch.setattr(standin, "FakeGraph", lambda undo: base(undo, fail=("end", "invalidated", False)))

    def step(x, y, draws, lr):
        return x.sum().reshape(()), y

    r, _ = _runner(step)
    _drive(r)  # with the reset: a fallback, and on
    assert r.mode.startswith("fallback: capture failed: RuntimeError: invalidated"), r.mode
    assert not standin.DEFAULT_RNG.state.capturing
    monkeypatch.setattr(capture, "reset_generator", lambda gen, dev: None)
    r, _ = _runner(step)
    try:
        with pytest.raises(RuntimeError, match="default CUDA generator is unusable"):
            _drive(r)
    finally:
        standin.DEFAULT_RNG.capture_epilogue()


def test_a_recompile_after_warm_up_is_a_named_fallback():
    """A compiled module whose input shape changes after the first step: a recompile during
    the guarded warm-up is a fallback that says so, and the job runs on eagerly."""
    from advss.fast import _TrainEvalCompiled

    torch._dynamo.reset()  # one cache per code object: no earlier test may hold the half-batch graph
    lin = torch.nn.Linear(3, 2)
    lin.forward = _TrainEvalCompiled(lin, "eager")
    calls = []

    def step(x, y, draws, lr):
        calls.append(1)
        rows = len(x) if len(calls) == 1 else len(x) // 2  # the second step meets a new shape
        return lin(x[:rows]).sum().reshape(()), y

    r, _ = _runner(step)
    _drive(r)
    assert r.mode.startswith("fallback: recompile after warm-up (warm-up step 2)"), r.mode


def test_a_compiled_trunk_runs_guarded_without_recompiling():
    """The guard is suspended inside the compiled call: the warm-up's second step hits the
    first step's cache (an active dispatch mode would change every tensor's dispatch keys)."""
    from advss.fast import _TrainEvalCompiled, graphs_compiled

    lin = torch.nn.Linear(3, 2)
    lin.forward = _TrainEvalCompiled(lin, "eager")
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    init_momentum(opt)

    def step(x, y, draws, lr):
        loss = lin(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sgd_update(opt, lr)
        return loss.detach(), y

    r, _ = _runner(step, model=lin, opt=opt)
    _drive(r, n=2)
    g = graphs_compiled()
    _drive(r, n=4)
    assert r.captured and graphs_compiled() == g, r.mode


# ------------------------------------------------------------------ device-resident constants
KINDS = gpucheck.PRETRAIN_KINDS + ["finetune F4"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_kind_copies_host_data_or_constants_per_batch(kind, tiny_data):
    """Every training kind's per-batch work (augmentation, the task's batch, the step), after
    its first batch, under the guard and the CPU stand-in for a host-to-device copy
    (`.to(device)` of a tensor the job does not keep on the device)."""
    import argparse

    import yaml

    from advss import data as D
    from advss.io import batch_seed, generator
    from advss.train import setup

    a = argparse.Namespace(train_steps=1, eval_steps=1, batch=8, n_eval=8)
    pretext = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())["pretext"]
    fast = {"cuda_graphs": False}
    spec = (gpucheck.finetune_spec("F4", a, dict(TINY_MODEL), fast) if kind.startswith("finetune")
            else gpucheck.pretrain_spec(kind, a, {"pretext": pretext}, dict(TINY_MODEL), fast))
    job = setup(spec, tiny_data, device="cpu", log=lambda m: None)
    (fx, fy), dev = job.fit, job.dev
    job.task.set_epoch(0, job.epochs, dev)
    resident = list(job.model.parameters()) + list(job.model.buffers()) + [fx, fy, job.runner.lr] + [
        v for st in job.opt.state.values() for v in st.values() if torch.is_tensor(v)]
    for b in range(2):
        guard = (graphguard.HostGuard(), graphguard.ConstantMoves(resident)) if b else ()
        gen = generator(batch_seed(0, 0, b), dev)
        idx = torch.arange(b * 8, (b + 1) * 8)
        with _all(guard):
            xb = D.augment(D.to_float(fx[idx]), gen)
            inputs, targets = job.task.make_batch(xb, fy[idx], gen)
            job.runner(inputs, targets, gen, 0.01)


def _all(ctxs):
    import contextlib

    stack = contextlib.ExitStack()
    for c in ctxs:
        stack.enter_context(c)
    return stack


def test_the_constant_stand_in_catches_a_per_batch_copy_on_a_cpu():
    table = torch.arange(6)
    x = torch.zeros(3)
    with pytest.raises(graphguard.GraphUnsafe, match="host-to-device copy"):
        with graphguard.ConstantMoves([x]):
            table.to(x.device)
    with graphguard.ConstantMoves([x]):
        x.to(x.device)                          # resident: fine
        torch.rand(3).to(x.device)              # made here: fine
        table.to(torch.float64)                 # a dtype change is no copy to the device


def test_draws_are_still_static_under_the_guard():
    d = Draws().start(torch.Generator().manual_seed(0))
    with graphguard.HostGuard():
        d.rand((2, 3), "cpu")
