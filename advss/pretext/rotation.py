"""Rotation (Gidaris et al. 2018): predict k of a k·90° rotation, 4 classes."""
import torch

from advss.pretext import Task


class Rotation(Task):
    name = "rotation"
    n_classes = 4

    def __init__(self, state=None):
        pass

    def make_batch(self, x, y, gen):
        """Each image gets one rotation; labels are balanced within the batch
        (a shuffled 0,1,2,3,0,1,... sequence) rather than the 4× expanded batch
        of the reference code, which costs 4× the compute for the same signal."""
        n = len(x)
        k = (torch.arange(n, device=x.device) % 4)[torch.randperm(n, generator=gen, device=gen.device).to(x.device)]
        return rotate(x, k), k


def rotate(x, k):
    """Rotate each image x[i] by k[i]·90° counter-clockwise, batched by k."""
    out = x.clone()
    for r in range(1, 4):
        sel = k == r
        out[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    return out
