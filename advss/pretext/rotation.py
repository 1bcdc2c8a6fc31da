"""Rotation (Gidaris et al. 2018): predict k of a k·90° rotation, 4 classes."""
import torch

from advss.pretext.base import Task


class Rotation(Task):
    name = "rotation"
    n_classes = 4

    def __init__(self, state=None):
        pass

    def make_batch(self, x, y, gen):
        """Each image gets one rotation and the labels are balanced within the batch
        (a shuffled 0,1,2,3,0,1,... sequence), as the reference code's `rotation()`
        does (it loops over the images; this is batched)."""
        n = len(x)
        k = (torch.arange(n, device=x.device) % 4)[torch.randperm(n, generator=gen, device=gen.device).to(x.device)]
        return rotate(x, k), k


def rotate(x, k):
    """Rotate each image x[i] by k[i]·90° counter-clockwise. All four rotations are
    formed and one is picked per image (no boolean indexing: nothing is read back to
    the host, so a CUDA graph can hold it). Square images only."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotation needs square images, not {tuple(x.shape[-2:])}")
    all4 = torch.stack([torch.rot90(x, r, dims=(2, 3)) for r in range(4)])  # 4×N×C×H×W
    return all4[k, torch.arange(len(x), device=x.device)]
