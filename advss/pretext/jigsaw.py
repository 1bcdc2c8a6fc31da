"""Jigsaw (Noroozi & Favaro 2016, as in the paper): shuffle a g×g grid of patches
by one of a fixed table of permutations; predict which (identity = class 0)."""
import torch

from advss.pretext.base import Task


def patchify(x, grid):
    """N×C×H×W -> N×C×grid²×(H/grid)×(W/grid), patches in row-major order."""
    n, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    return x.reshape(n, c, grid, ph, grid, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, grid * grid, ph, pw)


def unpatchify(p, grid):
    n, c, _, ph, pw = p.shape
    return p.reshape(n, c, grid, grid, ph, pw).permute(0, 1, 2, 4, 3, 5).reshape(n, c, grid * ph, grid * pw)


def permutation_table(n_perms: int, n_patches: int, seed: int) -> torch.Tensor:
    """Identity + n_perms distinct random non-identity permutations, drawn once from a seed."""
    g = torch.Generator().manual_seed(seed)
    ident = torch.arange(n_patches)
    perms = [ident]
    seen = {tuple(ident.tolist())}
    while len(perms) < n_perms + 1:
        p = torch.randperm(n_patches, generator=g)
        if tuple(p.tolist()) not in seen:
            seen.add(tuple(p.tolist()))
            perms.append(p)
    return torch.stack(perms)


class Jigsaw(Task):
    name = "jigsaw"

    def __init__(self, grid=4, n_perms=30, p_permute=0.9, perm_seed=0, state=None):
        self.grid, self.p_permute = grid, p_permute
        if state and "perms" in state:  # the table travels with the checkpoint
            self.perms = state["perms"].long()
        else:
            self.perms = permutation_table(n_perms, grid * grid, perm_seed)
        self.n_classes = len(self.perms)
        self._on_device = {}

    def make_batch(self, x, y, gen):
        """With probability p_permute draw a row uniformly from the whole table, the
        identity included, else keep the identity, as the reference code does: the
        identity's probability is 1 − p + p/(n_perms + 1) (0.1 + 0.9/31 ≈ 0.129 at the
        paper's settings). Output patch j is input patch perm[j]."""
        n, dev = len(x), gen.device
        permute = torch.rand(n, generator=gen, device=dev) < self.p_permute
        which = torch.randint(0, self.n_classes, (n,), generator=gen, device=dev)
        labels = torch.where(permute, which, torch.zeros_like(which)).to(x.device)
        return self.apply(x, labels), labels

    def table(self, device) -> torch.Tensor:
        """The permutation table on `device`, copied there once: a copy per batch would be a
        blocking host-to-device round trip (and, under a CUDA graph, a frozen one)."""
        if device not in self._on_device:
            self._on_device[device] = self.perms.to(device)
        return self._on_device[device]

    def apply(self, x, labels):
        perm = self.table(x.device)[labels]                                     # n×P
        p = patchify(x, self.grid)
        idx = perm[:, None, :, None, None].expand(-1, p.shape[1], -1, p.shape[3], p.shape[4])
        return unpatchify(torch.gather(p, 2, idx), self.grid)

    def undo(self, x, labels):
        inv = torch.argsort(self.table(x.device)[labels], dim=1)
        p = patchify(x, self.grid)
        idx = inv[:, None, :, None, None].expand(-1, p.shape[1], -1, p.shape[3], p.shape[4])
        return unpatchify(torch.gather(p, 2, idx), self.grid)

    def state(self):
        return {"perms": self.perms.clone()}
