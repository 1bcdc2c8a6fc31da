"""Pretext tasks: labels undo their transform; Selfie learns an easy case."""
import pytest
import torch

from advss.data import make_procedural, to_float
from advss.models import Model, build_trunk
from advss.pretext import build_task
from advss.pretext.jigsaw import Jigsaw, patchify, permutation_table
from advss.pretext.rotation import Rotation
from conftest import TINY_MODEL


def _images(n=32):
    x, y = make_procedural(max(1, n // 10 + 1), seed=3)
    return to_float(x[:n]), y[:n]


def test_rotation_targets_undo_rotation():
    x, y = _images()
    inputs, k = Rotation().make_batch(x, y, torch.Generator().manual_seed(0))
    assert torch.bincount(k, minlength=4).tolist() == [8, 8, 8, 8]  # balanced in the batch
    for i in range(len(x)):
        assert torch.equal(torch.rot90(inputs[i], -int(k[i]), dims=(1, 2)), x[i])
    assert not torch.equal(inputs[k == 1], x[k == 1])


def test_jigsaw_table_and_targets_undo_permutation():
    task = Jigsaw(grid=4, n_perms=30, p_permute=0.9, perm_seed=0)
    assert task.n_classes == 31 and task.perms.shape == (31, 16)
    assert torch.equal(task.perms[0], torch.arange(16))
    assert len({tuple(p.tolist()) for p in task.perms}) == 31
    assert torch.equal(permutation_table(30, 16, 0), task.perms)  # seeded
    x, y = _images()
    inputs, labels = task.make_batch(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(task.undo(inputs, labels), x)
    # patch j of the output is patch perm[j] of the input
    p_in, p_out = patchify(x, 4), patchify(inputs, 4)
    for i in range(4):
        perm = task.perms[labels[i]]
        for j in range(16):
            assert torch.equal(p_out[i, :, j], p_in[i, :, perm[j]])


def test_jigsaw_identity_probability_follows_the_reference():
    """The reference permutes with probability 0.9, drawing from all 31 rows (identity
    included): P(identity) = 0.1 + 0.9/31 ≈ 0.129, not 0.10."""
    task = Jigsaw(p_permute=0.9)
    x = torch.rand(20000, 3, 4, 4)  # 1-pixel patches: cheap, and the labels are what is tested
    _, labels = task.make_batch(x, None, torch.Generator().manual_seed(0))
    p_identity = (labels == 0).float().mean().item()
    assert abs(p_identity - (0.1 + 0.9 / 31)) < 0.01, p_identity       # sd ≈ 0.0024
    assert (labels == 1).float().mean().item() == pytest.approx(0.9 / 31, abs=0.006)
    assert set(labels.unique().tolist()) == set(range(31))


def test_jigsaw_table_travels_with_state():
    a = Jigsaw(perm_seed=1)
    b = build_task("jigsaw", {"jigsaw": {"perm_seed": 99}}, state=a.state())
    assert torch.equal(a.perms, b.perms)


def test_selfie_picks_the_right_patch_on_an_easy_case():
    """Each grid location has its own colour, so the right patch for a location is
    recognisable; a few hundred steps must bring accuracy near 1 (chance = 1/4)."""
    torch.manual_seed(0)
    task = build_task("selfie", {"selfie": {"grid": 4, "n_masked": 4, "layers": 1, "heads": 2, "d_ff": 32,
                                            "dropout": 0.0}})
    trunk = build_trunk(TINY_MODEL)
    model = Model(trunk, task.build_head(trunk))
    colours = torch.rand(16, 3)
    base = colours.view(4, 4, 3).permute(2, 0, 1).repeat_interleave(8, 1).repeat_interleave(8, 2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def batch():
        x = (base[None] + 0.05 * torch.randn(16, 3, 32, 32, generator=gen)).clamp(0, 1)
        return task.make_batch(x, None, gen)

    for _ in range(150):
        inputs, masked = batch()
        loss, _ = task.loss(model, inputs, masked)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    model.eval()
    accs = []
    with torch.no_grad():
        for _ in range(5):
            inputs, masked = batch()
            accs.append(task.correct(task.loss(model, inputs, masked)[1], masked).mean())
    assert torch.stack(accs).mean() > 0.9


def test_selfie_trains_only_stem_to_layer3():
    task = build_task("selfie", {"selfie": {"layers": 1, "heads": 2, "d_ff": 32}})
    trunk = build_trunk(TINY_MODEL)
    model = Model(trunk, task.build_head(trunk))
    inputs, masked = task.make_batch(torch.rand(4, 3, 32, 32), None, torch.Generator().manual_seed(0))
    task.loss(model, inputs, masked)[0].sum().backward()
    assert model.trunk.layer4[0].conv1.weight.grad is None
    assert model.trunk.layer3[0].conv1.weight.grad is not None
