"""LARS's defining property with a weight decay large enough to matter (issue 24): the
trust ratio η·‖w‖ / (‖g‖ + wd·‖w‖) scales the step g + wd·w so that a layer moves by at
most lr·η·‖w‖, and by exactly that when g points along w, whatever the gradient's scale.
tests/test_contrastive.py checks the step against ACL's optimizer/lars.py at ACL's 1e-6,
where the weight-decay terms move the update by about 1e-6 and no tolerance sees them."""
import pytest
import torch

from advss.step import init_momentum, sgd_update

ETA, LR = 0.001, 5.0


def first_step(weights, grads, wd):
    """The parameters' change after one LARS step from fresh momentum buffers."""
    ps = [w.clone().requires_grad_(True) for w in weights]
    opt = torch.optim.SGD(ps, lr=LR, momentum=0.9, weight_decay=wd)
    opt.param_groups[0]["lars_eta"] = ETA
    init_momentum(opt)
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    sgd_update(opt, torch.tensor(LR))
    return [(p.detach() - w) for p, w in zip(ps, weights)]


@pytest.mark.parametrize("wd", [0.0, 0.05, 0.5])
def test_a_gradient_along_the_weight_moves_the_layer_by_lr_eta_norm(wd):
    torch.manual_seed(0)
    weights = [3.0 * torch.randn(5, 3), 0.2 * torch.randn(7), torch.randn(2, 2, 3)]
    # the gradient's scale is arbitrary (0.01·w to 2·w): LARS's step does not depend on it
    grads = [c * w for c, w in zip((0.01, 2.0, 0.1), weights)]
    for w, dw in zip(weights, first_step(weights, grads, wd)):
        assert dw.norm().item() == pytest.approx(LR * ETA * w.norm().item(), rel=1e-5)
        assert torch.nn.functional.cosine_similarity(-dw.flatten(), w.flatten(), dim=0).item() == pytest.approx(1.0)


def test_any_gradient_moves_the_layer_by_at_most_lr_eta_norm():
    torch.manual_seed(1)
    weights = [torch.randn(6, 4) for _ in range(20)]
    grads = [0.05 * torch.randn(6, 4) for _ in range(20)]  # ‖g‖ ≈ wd·‖w‖: the decay term matters
    steps = first_step(weights, grads, wd=0.01)
    ratios = [dw.norm().item() / (LR * ETA * w.norm().item()) for w, dw in zip(weights, steps)]
    assert max(ratios) <= 1 + 1e-5 and min(ratios) > 0.5, ratios
