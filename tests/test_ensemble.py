"""Ensemble adversarial pretraining (eq. 2–4): the log-det diversity term, its gradient
to the weights, the α = 0 path, the sign key and what each sign does to g, the
three-member task, a pretrain → fine-tune run through the one training loop, and
Table 5 with a row (and a pretraining) per sign."""
from __future__ import annotations

import json
import math
import shlex

import pytest
import torch
import yaml

from conftest import ROOT, TINY_MODEL, train_spec

from advss import protocol as P
from advss.attacks import Threat
from advss.objectives import RIDGE, log_det_diversity, logdet_spd, member_losses_and_diversity
from advss.io import generator
from advss import objectives
from advss.objectives import OBJECTIVES
from advss.pretext import build_task
from advss.pretext.jigsaw import Jigsaw
from advss.pretext.rotation import rotate
from advss.train import build

SELFIE_SMALL = {"layers": 1, "heads": 2, "d_ff": 32}  # a one-layer transformer: fast on a CPU
PRETEXT = {"ensemble": {"pretext": {"selfie": SELFIE_SMALL}}}


def ensemble_model(seed=0):
    torch.manual_seed(seed)
    return build({"task": "ensemble", "model": TINY_MODEL, "pretext": PRETEXT}, 10)


def batch(task, n=16, seed=0):
    x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return x, *task.make_batch(x, None, generator(seed, "cpu"))


# ------------------------------------------------------------------ g
def test_log_det_is_zero_for_orthogonal_and_very_negative_for_parallel_gradients():
    d = 48
    eye = torch.eye(d)
    orth = torch.stack([3.0 * eye[0], -0.5 * eye[7], 2.0 * eye[20]])[None]          # 1×3×d, any lengths
    g_orth = log_det_diversity(orth)
    assert abs(float(g_orth) - 3 * math.log1p(RIDGE)) < 1e-6                          # log det((1+ridge)·I)
    v = torch.randn(d)
    par = torch.stack([v, 2 * v, 0.1 * v])[None]
    g_par = log_det_diversity(par)
    assert abs(float(g_par) - (math.log(3) + 2 * math.log(RIDGE))) < 0.05            # eigenvalues 3, ridge, ridge: ≈ −21.9
    mixed = torch.stack([v, v + 0.3 * torch.randn(d), torch.randn(d)])[None]
    assert float(g_par) < float(log_det_diversity(mixed)) < float(g_orth)            # more aligned, lower g


def _grams(k, n=400, seed=0):
    """Random k×k Gram matrices GᵀG + ridge·I of normalised columns: generic ones and
    near-singular ones (columns parallel up to 1e-3 … 0, or a zero column)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, 40, k, dtype=torch.float64, generator=gen)
    v = torch.randn(n, 40, 1, dtype=torch.float64, generator=gen)
    near = [v * torch.tensor([1.0, -2.0, 0.5, 3.0][:k], dtype=torch.float64)
            + s * torch.randn(n, 40, k, dtype=torch.float64, generator=gen) for s in (1e-3, 1e-6, 1e-9, 0.0)]
    zero = g.clone()
    zero[..., -1] = 0
    g = torch.cat([g, *near, zero])
    g = g / (g.norm(dim=1, keepdim=True) + 1e-10)
    return g.transpose(1, 2) @ g + RIDGE * torch.eye(k, dtype=torch.float64)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_closed_form_log_det_equals_torch_logdet_in_float64(k):
    a = _grams(k)
    ref = torch.logdet(a)
    assert float(ref.min()) < (k - 1) * math.log(RIDGE) + math.log(k) + 0.1   # parallel columns are in there
    got = logdet_spd(a)
    assert got.dtype == torch.float64
    assert float((got - ref).abs().max()) < 1e-10


def test_log_det_calls_no_linear_algebra_library(monkeypatch):
    """cuSOLVER (cholesky, logdet, det) is not known to be capturable in a CUDA graph, and
    it checks its result on the host: g is built from elementwise ops alone."""
    grads = torch.randn(5, 3, 3, 8, 8)
    g = grads.flatten(2).double()
    g = g / g.norm(dim=2, keepdim=True)
    ref = torch.logdet(g @ g.transpose(1, 2) + RIDGE * torch.eye(3, dtype=torch.float64)).float()

    def refuse(*a, **k):
        raise AssertionError("a linear-algebra library call")

    for name in ("cholesky", "cholesky_ex", "det", "slogdet", "logdet", "lu_factor", "lu_factor_ex", "eigvalsh"):
        monkeypatch.setattr(torch.linalg, name, refuse, raising=False)
    for name in ("logdet", "det", "slogdet", "cholesky"):
        monkeypatch.setattr(torch, name, refuse)
    torch.testing.assert_close(log_det_diversity(grads), ref, atol=1e-6, rtol=0)


def test_g_is_differentiable_with_respect_to_the_shared_trunk():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    _, g, _ = member_losses_and_diversity(model, task, inputs, targets)
    assert g.shape == (len(inputs),) and bool((g <= 1e-4).all())
    g.mean().backward()
    for name in ("trunk.stem.0.weight", "trunk.layer3.0.conv1.weight",
                 "head.branches.rotation.layer4.0.conv1.weight", "head.branches.jigsaw.head.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name
    # the trunk's own layer4 is not part of the ensemble (each branch has its copy)
    assert model.trunk.layer4[0].conv1.weight.grad is None


# ------------------------------------------------------------------ the objective
def _loss(kind, cfg, model, task, inputs, targets, steps=2):
    torch.manual_seed(1)  # Selfie's dropout
    return OBJECTIVES[kind](model, task, inputs, targets, generator(3, "cpu"), cfg, Threat(steps=steps))


def test_alpha_zero_is_plain_multitask_adversarial_training():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    ref_loss, ref_logits = _loss("adversarial", {"mix": "clean+adv"}, model, task, inputs, targets)
    loss, logits = _loss("ensemble", {"alpha": 0.0, "mix": "clean+adv"}, model, task, inputs, targets)
    assert torch.equal(loss, ref_loss) and torch.equal(logits, ref_logits)
    # the full path (g through PGD and the weights) with a negligible α is the same training loss
    tiny, _ = _loss("ensemble", {"alpha": 1e-9, "mix": "clean+adv"}, model, task, inputs, targets)
    assert abs(float(tiny.detach()) - float(ref_loss.detach())) < 1e-3 * abs(float(ref_loss.detach()))


def test_sign_key_flips_the_regulariser_in_the_weights_loss():
    model, task = ensemble_model()
    _, inputs, targets = batch(task)
    alpha = 0.5
    # no attack steps (δ = 0): the two weights' losses differ by 2·α·mean(g), g in (−22, 0]
    plus, _ = _loss("ensemble", {"alpha": alpha, "sign": 1}, model, task, inputs, targets, steps=0)
    minus, _ = _loss("ensemble", {"alpha": alpha, "sign": -1}, model, task, inputs, targets, steps=0)
    g_mean = (plus - minus).item() / (2 * alpha)
    assert 2 * math.log(RIDGE) + math.log(3) < g_mean < 0
    with pytest.raises(ValueError, match="sign"):
        _loss("ensemble", {"alpha": alpha, "sign": 2}, model, task, inputs, targets, steps=1)


class ToyMembers(torch.nn.Module):
    """M members on one input each: a shared and an own linear map, a shared head. The own
    maps start small, so the members' input gradients start nearly aligned (g ≈ −4)."""

    def __init__(self, d=16, h=8, c=4, m=3):
        super().__init__()
        self.shared, self.head = torch.nn.Linear(d, h, bias=False), torch.nn.Linear(h, c)
        self.own = torch.nn.ModuleList(torch.nn.Linear(d, h, bias=False) for _ in range(m))
        with torch.no_grad():
            for o in self.own:
                o.weight.mul_(0.3)

    def forward(self, x):
        return torch.stack([self.head(torch.tanh(self.shared(x[:, k]) + o(x[:, k]))) for k, o in enumerate(self.own)], 1)


class ToyTask:
    """The ensemble task's interface: per-member losses (N×M), member k reads x[:, k]."""
    name = "toy"

    def member_losses(self, model, x, targets):
        logits = model(x)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(),
                                                 reduction="none").view(targets.shape), logits

    def loss(self, model, x, targets):
        losses, logits = self.member_losses(model, x, targets)
        return losses.mean(1), logits


@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_of_minus_sign_raises_g_and_plus_sign_lowers_it(seed):
    """What Table 5's two rows differ in: minimising ℓ − α·g diversifies the members' input
    gradients (g up, towards 0 = orthogonal), minimising ℓ + α·g (eq. 3) aligns them (g down)."""
    torch.manual_seed(seed)
    x = torch.rand(32, 1, 16).expand(32, 3, 16).contiguous()           # one image for all members
    targets = torch.randint(0, 4, (32, 1)).expand(32, 3).contiguous()
    init = ToyMembers().state_dict()
    task = ToyTask()

    def g_mean(model):
        return float(member_losses_and_diversity(model, task, x, targets)[1].mean().detach())

    after = {}
    for sign in (1, -1):
        model = ToyMembers()
        model.load_state_dict(init)
        g0 = g_mean(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss, _ = OBJECTIVES["ensemble"](model, task, x, targets, generator(3, "cpu"),
                                         {"alpha": 0.1, "sign": sign}, Threat(steps=1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        after[sign] = g_mean(model)
    assert -8 < g0 < -1                                                # aligned, but not parallel
    assert after[-1] > g0 + 1e-3 and after[1] < g0 - 1e-3, (g0, after)


@pytest.mark.parametrize("sign", [1, -1])
def test_attack_ascends_the_summed_member_losses_plus_sign_alpha_g(sign, monkeypatch):
    """Eq. (3) and the reference's PGD_attack_3module: the attack's direction is the input
    gradient of Σᵢ ℓᵢ + sign·α·g (not of their mean, and with the update's sign), here
    with g recomputed by torch.logdet. One L2 step from δ = 0 shows the whole direction."""
    torch.manual_seed(0)
    x = 0.25 + 0.5 * torch.rand(8, 3, 16)
    targets = torch.randint(0, 4, (8, 3))
    model, task, alpha = ToyMembers(), ToyTask(), 1.0
    step = 1e-4
    threat = Threat(norm="l2", eps=1.0, step=step, steps=1, random_start=False)

    def direction(z):
        z = z.detach().requires_grad_(True)
        losses, _ = task.member_losses(model, z, targets)
        grads, = torch.autograd.grad(losses.sum(), z, create_graph=True)
        g = grads.double() / (grads.double().norm(dim=2, keepdim=True) + 1e-10)
        g = torch.logdet(g @ g.transpose(1, 2) + RIDGE * torch.eye(3, dtype=torch.float64)).float()
        d, = torch.autograd.grad((losses.sum(1) + sign * alpha * g).sum(), z)
        return d / d.flatten(1).norm(dim=1).view(-1, 1, 1)

    seen = {}
    real = objectives.pgd

    def spy(loss_fn, x0, threat, gen):
        out = real(loss_fn, x0, threat, gen)
        seen["step"] = (out - x0) / step
        return out

    monkeypatch.setattr(objectives, "pgd", spy)
    OBJECTIVES["ensemble"](model, task, x, targets, generator(3, "cpu"), {"alpha": alpha, "sign": sign}, threat)
    torch.testing.assert_close(seen["step"], direction(x), atol=2e-3, rtol=0)


# ------------------------------------------------------------------ the task
def test_members_are_built_from_the_same_image():
    model, task = ensemble_model()
    x, inputs, targets = batch(task, n=12)
    assert inputs.shape == (12, 3, 3, 32, 32)
    rot, jig = targets[:, 0], targets[:, 1]
    assert torch.equal(rotate(inputs[:, 0], (4 - rot) % 4), x)                       # undo the rotation
    assert torch.equal(task.tasks["jigsaw"].undo(inputs[:, 1], jig), x)              # undo the permutation
    assert torch.equal(inputs[:, 2], x)                                              # Selfie masks inside its loss
    _, logits = task.loss(model, inputs, targets)
    assert task.correct(logits, targets).shape == (12,)


def test_jigsaw_table_travels_with_the_checkpoint():
    _, task = ensemble_model()
    state = task.state()
    other = build_task("ensemble", {"ensemble": {"pretext": {"jigsaw": {"perm_seed": 99}}}}, state=state)
    assert torch.equal(other.tasks["jigsaw"].perms, task.tasks["jigsaw"].perms)
    assert not torch.equal(Jigsaw(perm_seed=99).perms, task.tasks["jigsaw"].perms)


def test_ensemble_pretraining_then_finetuning_transfers_the_shared_trunk(tiny_data, tmp_path):
    from advss.train import train

    pre = tmp_path / "pre"
    spec = train_spec(stage="pretrain", task="ensemble", pretext=PRETEXT, epochs=1, batch_size=64,
                      objective={"kind": "ensemble", "alpha": 0.1, "sign": 1, "mix": "clean+adv"},
                      select_by="last", augment=False, val_max=8,
                      threat={"eps": "8/255", "step": "2/255", "train_steps": 1, "eval_steps": 1})
    train(spec, tiny_data, pre / "model.pt", pre / "metrics.csv", pre / "meta.json", log=lambda m: None)
    ft = tmp_path / "ft"
    train(train_spec(epochs=1, val_max=8, eval_ra=False), tiny_data, ft / "model.pt", ft / "metrics.csv", ft / "meta.json",
          init=pre / "model.pt", log=lambda m: None)
    meta = json.loads((ft / "meta.json").read_text())
    kept = meta["transfer"]["kept_at_init"]
    assert kept and all(k.startswith("trunk.layer4.") for k in kept)                # stem..layer3 transferred
    pre_sd = torch.load(pre / "model.pt", weights_only=True)["state_dict"]
    init_sd = build(train_spec(), 10)[0].state_dict()
    changed = [k for k, v in pre_sd.items() if k.startswith("trunk.layer3.") and v.dtype.is_floating_point
               and not torch.equal(v, init_sd[k])]
    assert changed and meta["transfer"]["loaded"] == sum(k.startswith(("trunk.stem.", "trunk.layer1.", "trunk.layer2.",
                                                                         "trunk.layer3.")) for k in pre_sd)


# ------------------------------------------------------------------ Table 5, one row per sign
def _fake_finetune(run_dir, src, ft, seed, ta, ra, epochs):
    d = run_dir / "finetune" / src / ft / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "test.json").write_text(json.dumps({"ta": ta, "ra": ra}))
    (d / "meta.json").write_text(json.dumps({"epochs_to_best": epochs, "epochs_run": 3, "spec_hash": "x"}))


def test_table5_has_a_row_per_sign_with_its_own_results(tmp_path):
    from advss.report.ensembles import table5

    run = tmp_path / "results" / "r"
    srcs = ["rotation-adv", "jigsaw-adv", "selfie-adv", "ensemble-se", "ensemble-dpe", "ensemble-dpe-neg"]
    for i, src in enumerate(srcs):
        for seed in (0, 1):
            _fake_finetune(run, src, "full-adv", seed, ta=0.5 + 0.01 * i, ra=0.2 + 0.01 * i + 0.001 * seed, epochs=i)
    spec = {"run": "r", "run_dir": str(run), "tasks": ["rotation", "jigsaw", "selfie"], "seeds": [0, 1],
            "eval_steps": 5, "config_hash": "h", "ensemble_alpha": 0.1, "ensemble_signs": [1, -1],
            "ensemble_finetune": ["F4"]}
    agg = table5(spec, tmp_path / "table5")
    assert list(agg["model"]) == ["Rotation", "Jigsaw", "Selfie", "AP+SE", "AP+DPE (+α·g, Eq. 3)",
                                  "AP+DPE (−α·g, diversity)"]
    assert list(agg["source"]) == srcs
    assert agg["ra"].tolist() == pytest.approx([100 * (0.2 + 0.01 * i + 0.0005) for i in range(6)])
    dpe = agg[agg["source"].str.startswith("ensemble-dpe")]
    assert dpe["paper_ra"].tolist() == [P.PAPER_TABLE5["AP+DPE"][1]] * 2    # the paper's one AP+DPE beside each
    caption = (tmp_path / "table5.md").read_text()
    assert "is ≤ 0, and 0 when they are orthogonal" in caption
    assert "pushes g down, pulling the members' input gradients together" in caption      # +1
    assert "pushes g up, pushing the members' input gradients apart" in caption           # −1
    # a one-sign config (the older `sign: -1`) gives that row only
    spec["ensemble_signs"] = [-1]
    agg = table5(spec, tmp_path / "one")
    assert list(agg["model"])[-2:] == ["AP+SE", "AP+DPE (−α·g, diversity)"]
    assert "pushes g down" not in (tmp_path / "one.md").read_text()


def test_paper_config_pretrains_the_ensemble_with_the_references_optimiser():
    """ensemble_pretrain.py: SGD(lr 0.001, momentum 0.9, weight decay 1e-4, nesterov=True), cosine."""
    optim = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["ensemble"]["optim"]
    assert {k: optim[k] for k in ("lr", "momentum", "weight_decay", "nesterov", "schedule")} == {
        "lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True, "schedule": "cosine"}


def _dry_run_specs(tmp_path, ensemble: dict, *targets):
    """The --spec of each ensemble pretraining a dry run plans for `targets`, by output path,
    on the mini config with its `ensemble` section's sign keys replaced."""
    from test_workflow import snakemake

    cfg = yaml.safe_load((ROOT / "tests" / "configs" / "mini.yaml").read_text())
    cfg["ensemble"] = {k: v for k, v in cfg["ensemble"].items() if k not in ("sign", "signs")} | ensemble
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "-p", *targets, "--configfile", path, cwd=tmp_path, check=False)
    specs = {}
    for line in p.stdout.splitlines():
        if line.startswith("Shell command: python -m advss pretrain") and "/pretrain/ensemble-" in line:
            args = shlex.split(line.removeprefix("Shell command: ").split(" > ")[0])
            specs[args[args.index("--out-model") + 1]] = json.loads(args[args.index("--spec") + 1])
    return p, specs


def test_each_sign_is_its_own_pretraining_and_table5_asks_for_both(tmp_path):
    run = yaml.safe_load((ROOT / "tests" / "configs" / "mini.yaml").read_text())["run"]
    model = f"results/{run}/pretrain/{{}}/seed0/model.pt"
    optim = {"lr": 0.001, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": True, "schedule": "cosine"}
    p, specs = _dry_run_specs(tmp_path, {"signs": [1, -1], "optim": optim}, f"results/{run}/tables/table5.csv")
    assert p.returncode == 0, p.stderr[-3000:]
    assert all(v["optim"] == optim for v in specs.values())  # nesterov reaches the optimiser's spec
    assert {k: v["objective"].get("sign") for k, v in specs.items()} == {
        model.format("ensemble-se"): None, model.format("ensemble-dpe"): 1, model.format("ensemble-dpe-neg"): -1}
    assert all(v["objective"]["alpha"] == 0.1 for k, v in specs.items() if "dpe" in k)
    # a fix of the α > 0 objective (protocol.REVISION["ensemble"]) reruns AP+DPE's pretrainings, not AP+SE's
    assert {k: v["revision"].get("ensemble") for k, v in specs.items()} == {
        model.format("ensemble-se"): None, model.format("ensemble-dpe"): P.REVISION["ensemble"],
        model.format("ensemble-dpe-neg"): P.REVISION["ensemble"]}
    # the older one-value `sign` still works: sign −1 trains ensemble-dpe-neg only (ensemble-dpe stays +1)
    p, specs = _dry_run_specs(tmp_path, {"sign": -1}, f"results/{run}/tables/table5.csv")
    assert p.returncode == 0 and model.format("ensemble-dpe") not in specs
    assert specs[model.format("ensemble-dpe-neg")]["objective"]["sign"] == -1
    # both keys at once is refused before any job, with a message that says so
    p, _ = _dry_run_specs(tmp_path, {"sign": 1, "signs": [1, -1]}, f"results/{run}/tables/table5.csv")
    assert p.returncode != 0 and "not both" in p.stdout + p.stderr
