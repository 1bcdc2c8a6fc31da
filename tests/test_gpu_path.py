"""The code paths only a GPU takes (bf16 autocast, torch.compile, CUDA graphs), forced on
a CPU so that a dtype, double-backward or graph-plumbing failure shows up without a GPU."""
import csv
import json

import pytest
import torch

from advss import gpucheck
from advss.objectives import log_det_diversity
from advss.step import Draws, StepRunner, init_momentum, sgd_update
from advss.fast import graphs_compiled
from advss.train import lr_at, train
from conftest import ROOT, train_spec

FORCED = {"precision": "bf16", "channels_last": True, "compile": True, "cuda_graphs": True,
          "compile_backend": "aot_eager"}  # aot_eager: quick, and still through AOTAutograd


def _run(tmp, data, spec, name, **kw):
    d = tmp / name
    train(spec, data, d / "model.pt", d / "metrics.csv", d / "meta.json", device="cpu", log=lambda m: None, **kw)
    with open(d / "metrics.csv") as f:
        return d, list(csv.DictReader(f))


def test_every_job_kind_runs_with_bf16_compile_and_graphs_forced(tmp_path):
    """gpucheck's job kinds (pretraining of each task std/adv, AP+SE, AP+DPE, smoothing,
    rotation-auxiliary, F1–F4 from each kind of source, and every evaluation) on a tiny
    model: all complete and none compiles anything new after its warm-up."""
    rec = gpucheck.main(["--arch", "resnet-tiny", "--width", "4", "--batch", "8", "--batches", "4", "--n-eval", "8",
                         "--eval-batch", "8", "--train-steps", "1", "--eval-steps", "1", "--device", "cpu",
                         "--pretext-config", str(ROOT / "config" / "demo.yaml"),  # a 2-layer Selfie transformer
                         "--fast", json.dumps(FORCED), "--out", str(tmp_path / "gpucheck.json")])
    failed = [(r["kind"], r.get("error")) for r in rec["rows"] if not r["ok"]]
    assert not failed, failed
    assert {r["kind"] for r in rec["rows"]} == set(gpucheck.all_kinds())
    assert all(r["recompiles"] == 0 for r in rec["rows"]), [(r["kind"], r["recompiles"]) for r in rec["rows"]]
    assert json.loads((tmp_path / "gpucheck.json").read_text())["all_ok"]


def test_no_recompile_after_the_first_epoch(tiny_data, tmp_path):
    """A compiled job whose epoch ends in a partial batch (270 = 8×32 + 14) and that
    validates every epoch (PGD in eval mode on 30 images): epochs 2 and 3 build no graph."""
    marks = []
    spec = train_spec(objective={"kind": "adversarial", "mix": "adv"}, epochs=3, batch_size=32, fast=FORCED)
    before = graphs_compiled()
    _run(tmp_path, tiny_data, spec, "c", on_epoch=lambda row: marks.append(graphs_compiled()))
    assert marks[0] > before                 # it did compile (the check is not vacuous)
    assert marks[1] == marks[0] == marks[2]  # and nothing after the first epoch


def test_captured_step_replays_exactly_the_eager_step(tiny_data, tmp_path):
    """The graph runner's plumbing (static inputs, draws refilled per batch in the eager
    order, the lr tensor) changes nothing: the fake-graph run equals the eager run."""
    base = train_spec(objective={"kind": "adversarial", "mix": "adv"}, epochs=2, batch_size=32)
    _, eager = _run(tmp_path, tiny_data, {**base, "fast": {"cuda_graphs": False}}, "eager")
    d, graph = _run(tmp_path, tiny_data, {**base, "fast": {"cuda_graphs": True}}, "graph")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(graph) == strip(eager)
    assert json.loads((d / "meta.json").read_text())["fast"]["graphs"] == "fake"


def test_runner_refills_draws_from_each_batch_generator():
    """After capture, a replay must consume the new batch's random numbers, not the
    captured ones: the step returns its draw, which must match a fresh eager draw."""
    def step(x, y, draws, lr):
        return draws.rand(x.shape, x.device) * lr, y

    r = StepRunner(step, torch.device("cpu"), "fake", warmup=1, log=lambda m: None)
    x, y = torch.zeros(4, 3), torch.zeros(4)
    for seed in range(5):
        out, _ = r(x, y, torch.Generator().manual_seed(seed), lr=2.0)
        want = torch.rand(4, 3, generator=torch.Generator().manual_seed(seed)) * 2.0
        assert torch.equal(out, want), seed
    assert r.captured


def test_sgd_update_with_a_tensor_lr_equals_torch_sgd():
    torch.manual_seed(0)
    ref = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    mine = [p.detach().clone().requires_grad_(True) for p in ref]
    for nesterov in (False, True):
        o_ref = torch.optim.SGD(ref, lr=0.1, momentum=0.9, weight_decay=3e-4, nesterov=nesterov)
        o_mine = torch.optim.SGD(mine, lr=0.1, momentum=0.9, weight_decay=3e-4, nesterov=nesterov)
        init_momentum(o_mine)
        for step in range(4):
            lr = 0.1 * (step + 1)
            g = [torch.randn_like(p) for p in ref]
            for p, q, gg in zip(ref, mine, g):
                p.grad, q.grad = gg.clone(), gg.clone()
            for grp in o_ref.param_groups:
                grp["lr"] = lr
            o_ref.step()
            sgd_update(o_mine, torch.tensor(lr))
            for p, q in zip(ref, mine):
                torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_draws_refuse_a_step_whose_draws_change_shape():
    d = Draws().start(torch.Generator().manual_seed(0))
    d.rand((2, 3), "cpu")
    d.make_static()
    with pytest.raises(RuntimeError, match="not static"):
        d.rand((4, 3), "cpu")


def test_log_det_runs_in_float_outside_bf16_autocast():
    """torch.logdet refuses bf16 and bf16 cannot hold the 1e-5 ridge next to 1: the
    regulariser decides its own precision."""
    par = torch.randn(6, 1, 48).expand(6, 3, 48).bfloat16()
    orth = torch.eye(3).repeat(4, 1, 1).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        g_par, g_orth = log_det_diversity(par), log_det_diversity(orth)
    assert g_par.dtype == torch.float32
    torch.testing.assert_close(g_par, torch.full((6,), 2 * torch.log(torch.tensor(1e-5)).item() + torch.log(
        torch.tensor(3.0)).item()), atol=1e-3, rtol=0)
    assert g_orth.abs().max() < 1e-4


def test_step_schedule_warms_up_like_the_reference():
    """Fine-tuning: linear from 0.01 to 0.1 over 200 steps, then the milestones."""
    o = {"lr": 0.1, "schedule": "step", "milestones": [60, 80], "gamma": 0.1, "warmup_steps": 200, "warmup_lr": 0.01}
    assert lr_at(o, 0, 0, 352, 100) == pytest.approx(0.01)
    assert lr_at(o, 0, 100, 352, 100) == pytest.approx(0.055)
    assert lr_at(o, 0, 200, 352, 100) == pytest.approx(0.1)
    assert lr_at(o, 60, 60 * 352, 352, 100) == pytest.approx(0.01)


# ------------------------------------------------------------------ fallback and replay check
AT_SPEC = dict(objective={"kind": "adversarial", "mix": "adv"}, epochs=2, batch_size=32)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.fixture(scope="module")
def eager_run(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eager")
    d, rows = _run(tmp, tiny_data, train_spec(**AT_SPEC, fast={"cuda_graphs": False}), "eager")
    return rows, torch.load(d / "model.pt", weights_only=False)["state_dict"], json.loads((d / "meta.json").read_text())


def _same_model(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("where", ["capture", "end", "replay"])
@pytest.mark.parametrize("message,halfway", [("", False), ("cudaErrorStreamCaptureInvalidated", False),
                                             ("operation failed halfway", True)])
def test_a_failed_capture_or_first_replay_falls_back_to_exactly_the_eager_run(
        tiny_data, tmp_path, monkeypatch, eager_run, where, message, halfway):
    """An injected failure at capture, at its end (cudaStreamEndCapture: the generator's
    capture epilogue skipped) or at the first replay, with an empty message, a plain one, or
    halfway through the step (state half changed): the job finishes with exactly the eager
    run's metrics and weights, and meta.json and the log say it fell back."""
    from advss import standin

    base = standin.FakeGraph
    monkeypatch.setattr(standin, "FakeGraph", lambda undo: base(undo, fail=(where, message, halfway)))
    logs = []
    d = tmp_path / "f"
    train(train_spec(**AT_SPEC, fast={"cuda_graphs": True}), tiny_data, d / "model.pt", d / "metrics.csv",
          d / "meta.json", device="cpu", log=logs.append)
    rows, model, _ = eager_run
    with open(d / "metrics.csv") as f:
        assert _strip(list(csv.DictReader(f))) == _strip(rows)
    _same_model(torch.load(d / "model.pt", weights_only=False)["state_dict"], model)
    meta = json.loads((d / "meta.json").read_text())
    stage = "first replay" if where == "replay" else "capture"
    assert meta["step_path"].startswith(f"fallback: {stage} failed: RuntimeError"), meta["step_path"]
    assert (message or "RuntimeError('')") in meta["step_path"]
    assert meta["fast"]["graphs"] == "off" and meta["fast_requested"]["graphs"] == "fake"
    assert sum("graph stand-in off" in m for m in logs) == 1
    assert sum(m.startswith("training step path: fallback") for m in logs) == 1
    assert not standin.DEFAULT_RNG.state.capturing  # reset after a capture that did not end


def test_a_captured_job_says_so_and_passes_its_replay_check(tiny_data, tmp_path, eager_run):
    logs = []
    d = tmp_path / "c"
    train(train_spec(**AT_SPEC, fast={"cuda_graphs": True}), tiny_data, d / "model.pt", d / "metrics.csv",
          d / "meta.json", device="cpu", log=logs.append)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["step_path"] == "captured" and meta["fast"]["graphs"] == "fake"
    assert meta["replay_check"]["passed"] and meta["replay_check"]["update_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert set(meta["replay_check"]["max_rel_err"].values()) == {0.0}  # a CPU's two runs are bitwise equal
    assert len(meta["s_per_batch_after_warmup"]) == 2 and all(s > 0 for s in meta["s_per_batch_after_warmup"])
    assert any("replay check" in m for m in logs)
    _same_model(torch.load(d / "model.pt", weights_only=False)["state_dict"], eager_run[1])
    assert eager_run[2]["step_path"] == "off"


def test_a_replay_that_differs_from_eager_is_dropped(tiny_data, tmp_path, monkeypatch, eager_run):
    """A graph that replays something else than the eager step (here: it also scales every
    weight, as a frozen stale value would) fails the check; the job keeps the eager state."""
    from advss import standin

    class Wrong(standin.FakeGraph):
        def replay(self):
            out = super().replay()
            with torch.no_grad():
                for p in RUNNER[0].model.parameters():
                    p.mul_(1.5)
            return out

    _hold_runner(monkeypatch)
    monkeypatch.setattr(standin, "FakeGraph", Wrong)
    d = tmp_path / "w"
    train(train_spec(**AT_SPEC, fast={"cuda_graphs": True}), tiny_data, d / "model.pt", d / "metrics.csv",
          d / "meta.json", device="cpu", log=lambda m: None)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["step_path"].startswith("fallback: replay mismatch"), meta["step_path"]
    assert meta["replay_check"]["max_rel_err"]["update"] > meta["replay_check"]["rtol"]
    with open(d / "metrics.csv") as f:
        assert _strip(list(csv.DictReader(f))) == _strip(eager_run[0])


RUNNER = []


def _hold_runner(monkeypatch):
    """Keep the job's StepRunner in RUNNER[0], for fault-injecting stand-ins."""
    from advss import step

    real_init = step.StepRunner.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        RUNNER[:] = [self]

    monkeypatch.setattr(step.StepRunner, "__init__", init)


def test_describe_handles_empty_messages_and_names_the_real_cause():
    from advss.step import describe

    assert describe(RuntimeError("")) == "RuntimeError('')"
    try:
        try:
            raise ValueError("the real cause\nsecond line")
        except ValueError:
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as e:
        d = describe(e)
    assert "previous error" in d and "ValueError: the real cause" in d and "second line" not in d


def test_quick_gpu_check_writes_valid_json_after_every_row_and_stops_by_its_deadline(tmp_path, monkeypatch):
    """The lease-sized check on a CPU with the GPU settings forced: after every row the file
    on disk is complete JSON holding that row, and a deadline too short for all rows stops
    it in time, marked as stopped, with the rows it measured."""
    import time

    from advss import gpuquick

    out, seen = tmp_path / "quick.json", []
    real_add = gpucheck.Record.add

    def add(self, row):
        real_add(self, row)
        on_disk = json.loads(out.read_text())
        assert on_disk["rows"][-1]["kind"] == row["kind"]
        seen.append(row["kind"])

    monkeypatch.setattr(gpucheck.Record, "add", add)
    deadline = 30.0  # all rows take ~25 s here with a warm compile cache, ~2 min cold: never enough
    t0 = time.monotonic()
    rec = gpuquick.main(["--config", str(ROOT / "config" / "demo.yaml"), "--arch", "resnet-tiny", "--width", "4",
                         "--batches", "2", "--check-batches", "4", "--batch", "8", "--train-steps", "1",
                         "--eval-steps", "1", "--n-eval", "8", "--ref-iters", "2", "--workers", "0", "--check-n", "32",
                         "--check-steps", "20", "--eval-n", "16", "--device", "cpu", "--fast", json.dumps(FORCED),
                         "--deadline", str(deadline), "--work", str(tmp_path / "w"), "--out", str(out)])
    assert time.monotonic() - t0 < deadline
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(rec)) and not saved["complete"] and "deadline" in saved["stopped"]
    assert not saved["all_ok"]
    cut = [r.get("skipped") == "deadline" or r.get("error", "").startswith("deadline") for r in saved["rows"]]
    assert cut[-1] and cut == sorted(cut)  # measured rows, then the row stopped and those skipped
    done = [r for r, c in zip(saved["rows"], cut) if not c]
    assert done and all(r["ok"] for r in done)
    assert all(r["step_path"] == "captured" and r["replay_check"]["passed"]
               for r in done if r.get("graphs_requested", "off") != "off" and not r["kind"].startswith("drill"))
    assert done[0]["kind"] == "finetune scratch F4" and done[0]["step_path"] == "captured"
    assert seen == [r["kind"] for r in saved["rows"]]


def test_gpucheck_fails_a_row_whose_graphs_fell_back(tmp_path, monkeypatch):
    """Graphs requested but not effective is a failure, not `ok`, and the row says what ran."""
    from advss import standin

    base = standin.FakeGraph
    monkeypatch.setattr(standin, "FakeGraph", lambda undo: base(undo, fail=("capture", "boom", False)))
    rec = gpucheck.main(["--arch", "resnet-tiny", "--width", "4", "--batch", "8", "--batches", "4", "--n-eval", "8",
                         "--train-steps", "1", "--device", "cpu", "--kinds", "finetune scratch F4",
                         "--fast", json.dumps({**FORCED, "compile": False}), "--out", str(tmp_path / "g.json")])
    (row,) = rec["rows"]
    assert not row["ok"] and not rec["all_ok"]
    assert "requested, but the step ran: fallback: capture failed: RuntimeError: boom" in row["error"]


def test_quick_check_acl_row_runs_the_workflows_acl_spec_captured(tmp_path):
    """The ACL row of the quick check: robust-ssl.yaml's ACL pretraining (its batch cut for a
    CPU) through the one loop with the GPU settings forced: captured, timed, replay-checked."""
    import yaml

    from advss import gpuquick

    cfg = yaml.safe_load((ROOT / "config" / "robust-ssl.yaml").read_text())
    cfg["robust_ssl"]["batch_size"], cfg["robust_ssl"]["train_steps"] = 8, 1
    path = tmp_path / "rssl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = gpuquick.acl_row(path, FORCED, 4, tmp_path / "w", "cpu", arch="resnet-tiny", width=4)
    assert r["step_path"] == "captured" and r["path_ok"] and r["recompiles"] == 0
    assert r["batch"] == 8 and r["s_epoch_45k"] > 0 and r["replay_check"]["passed"]


# ------------------------------------------------------------------ issue 23: faults the stand-in must catch
def _faulty_run(tmp_path, tiny_data, monkeypatch, graph_cls=None, step_wrap=None):
    from advss import standin, train as T

    _hold_runner(monkeypatch)
    if graph_cls is not None:
        monkeypatch.setattr(standin, "FakeGraph", graph_cls)
    if step_wrap is not None:
        monkeypatch.setattr(T, "train_step", step_wrap(T.train_step))
    d = tmp_path / "fault"
    train(train_spec(**AT_SPEC, fast={"cuda_graphs": True}), tiny_data, d / "model.pt", d / "metrics.csv",
          d / "meta.json", device="cpu", log=lambda m: None)
    with open(d / "metrics.csv") as f:
        rows = _strip(list(csv.DictReader(f)))
    return json.loads((d / "meta.json").read_text()), rows, torch.load(d / "model.pt", weights_only=False)["state_dict"]


def test_a_replay_at_0_7_times_the_learning_rate_falls_back(tiny_data, tmp_path, monkeypatch, eager_run):
    """Same direction, same loss, 30 % short: the per-parameter update sees it."""
    from advss import standin

    class LowLr(standin.FakeGraph):
        def replay(self):
            lr = RUNNER[0].lr
            with torch.no_grad():
                lr.mul_(0.7)  # outside the recorded step: the graph's own value is wrong
            try:
                return super().replay()
            finally:
                with torch.no_grad():
                    lr.div_(0.7)

    meta, rows, model = _faulty_run(tmp_path, tiny_data, monkeypatch, graph_cls=LowLr)
    assert meta["step_path"].startswith("fallback: replay mismatch (update "), meta["step_path"]
    assert meta["replay_check"]["max_rel_err"]["update"] == pytest.approx(0.3, rel=1e-3)
    assert rows == _strip(eager_run[0])
    _same_model(model, eager_run[1])


def test_a_replay_that_loses_one_parameters_gradient_falls_back(tiny_data, tmp_path, monkeypatch, eager_run):
    """The first parameter's gradient is lost by the graph (its update made without it)."""
    from advss import standin

    class LostGrad(standin.FakeGraph):
        def replay(self):
            r = RUNNER[0]
            p = next(iter(r.opt.param_groups[0]["params"]))
            g = r.opt.param_groups[0]
            buf = r.opt.state[p]["momentum_buffer"]
            p0, b0 = p.detach().clone(), buf.clone()
            out = super().replay()
            with torch.no_grad():  # redo this parameter's update with no gradient
                buf.copy_(b0 * g["momentum"] + g["weight_decay"] * p0)
                p.copy_(p0 - r.lr * buf)
                p.grad.zero_()
            return out

    meta, rows, model = _faulty_run(tmp_path, tiny_data, monkeypatch, graph_cls=LostGrad)
    assert meta["step_path"].startswith("fallback: replay mismatch ("), meta["step_path"]
    assert "trunk.stem.0.weight" in meta["step_path"]
    assert meta["replay_check"]["max_rel_err"]["gradient"] == pytest.approx(1.0)
    assert rows == _strip(eager_run[0])
    _same_model(model, eager_run[1])


def test_a_step_that_reads_the_learning_rate_to_the_host_falls_back(tiny_data, tmp_path, monkeypatch, eager_run):
    """float(lr) in the update: eagerly the same numbers, but a graph would freeze the value."""
    from advss import step

    real = step.sgd_update
    monkeypatch.setattr(step, "sgd_update", lambda opt, lr: real(opt, float(lr)))
    meta, rows, model = _faulty_run(tmp_path, tiny_data, monkeypatch)
    assert meta["step_path"].startswith("fallback: aten::_local_scalar_dense in the step (warm-up step 2)"), \
        meta["step_path"]
    assert rows == _strip(eager_run[0])
    _same_model(model, eager_run[1])


def test_a_forced_recompile_after_warm_up_is_a_named_fallback(tiny_data, tmp_path, monkeypatch):
    """From its second call the step also runs the compiled trunk on half the batch: a new
    shape, a recompile. With graphs on it is a named fallback (not a stray error), and the job
    ends with the metrics of the same step run eagerly."""
    def wrap(real):
        calls = []

        def step(model, *args):
            calls.append(1)
            if len(calls) > 1:
                with torch.no_grad():
                    model.trunk(args[6][: len(args[6]) // 2])
            return real(model, *args)
        return step

    from advss import train as T

    base, real = train_spec(**{**AT_SPEC, "epochs": 1}), T.train_step
    fast = {"compile": True, "compile_backend": "eager"}
    torch._dynamo.reset()  # compiled trunks share one cache: no earlier job may hold the half-batch graph
    monkeypatch.setattr(T, "train_step", wrap(real))
    d, graph = _run(tmp_path, tiny_data, {**base, "fast": {**fast, "cuda_graphs": True}}, "graph")
    monkeypatch.setattr(T, "train_step", wrap(real))
    _, eager = _run(tmp_path, tiny_data, {**base, "fast": {**fast, "cuda_graphs": False}}, "eager")
    meta = json.loads((d / "meta.json").read_text())
    assert meta["step_path"].startswith("fallback: recompile after warm-up (warm-up step 2)"), meta["step_path"]
    assert _strip(graph) == _strip(eager)


def test_ap_dpe_pretraining_with_selfie_dropout_0_completes(tmp_path):
    """The demo's AP+DPE pretraining (config/demo.yaml's ensemble and pretext sections) with
    Selfie's dropout at 0: a CPU then picks its flash attention kernel, whose backward has no
    derivative, as every fused kernel on a GPU; the objective runs attention on the math
    kernel, and meta.json says so. (Two batches of 8: it is the step that must complete.)"""
    import yaml

    from advss.data import prepare

    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg["pretext"]["selfie"]["dropout"] = 0.0
    data = tmp_path / "data.pt"
    prepare({"name": "procedural", "procedural": {"n_per_class": 2, "n_test_per_class": 1, "seed": 0},
             "val_fraction": 0.1, "split_seed": 0}, data)
    ens, members = cfg["ensemble"], cfg["ensemble"]["members"]
    spec = {"stage": "pretrain", "model": cfg["model"], "seed": 0, "deterministic": True, "fast": cfg["fast"],
            "threat": {**cfg["threat"], "train_steps": 1, "eval_steps": 1},
            "task": "ensemble", "pretext": {"ensemble": {"members": members,
                                                         "pretext": {t: cfg["pretext"].get(t, {}) for t in members}}},
            "objective": {"kind": "ensemble", "alpha": ens["alpha"], "sign": 1, "ridge": ens["ridge"],
                          "mix": cfg["pretrain"]["adv_mix"]},
            "eval_ra": True, "select_by": "last", "epochs": 1, "batch_size": 8, "augment": False,
            "optim": ens["optim"], "val_max": 2}
    d = tmp_path / "dpe"
    train(spec, data, d / "model.pt", d / "metrics.csv", d / "meta.json", device="cpu", log=lambda m: None)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["fast"]["sdpa"] == "math" and "differentiates twice" in meta["fast"]["why"]["sdpa"]
    assert meta["epochs_run"] == 1


def test_quick_check_drill_falls_back_and_matches_the_eager_run(tmp_path):
    """gpuquick's drill on a CPU: the stand-in's capture meets x.item(), the job falls back,
    the generator's capture flag is reset, and Selfie's dropout runs on with exactly the
    eager run's metrics."""
    from advss import gpuquick, standin

    r = gpuquick.drill_row(FORCED, {"arch": "resnet-tiny", "width": 4, "stem": "cifar"}, tmp_path, "cpu",
                           batch=8, batches=4)
    assert r["step_path"].startswith("fallback: aten::_local_scalar_dense in the step (capture)"), r["step_path"]
    assert r["metrics_equal"] and r["max_abs_diff"] == 0.0
    assert not standin.DEFAULT_RNG.state.capturing
