"""Selfie (Trinh et al. 2019, as in the paper): mask some patches of a g×g grid and
pick, for each masked location, the right patch among the masked ones.

Patch network P = the trunk's stem..layer3 applied to each patch and pooled (it is
what transfers to fine-tuning). An attention-pooling transformer reads the visible
patches behind a learned query u0; u0's output plus the row+column embedding of a
masked location is that location's query; logit(i, j) = <query_i, P(patch_j)>.
Choice: visible patches also get their position embedding before the transformer,
so it knows where each visible patch sits. The reference adds position embeddings
only after pooling (to u0's output, to form each masked location's query): its
transformer sees the visible patches without their positions.
The loss is plain cross-entropy on logits (the reference's extra softmax is not kept).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.pretext.base import Task
from advss.pretext.jigsaw import patchify


class SelfieHead(nn.Module):
    def __init__(self, d_in, grid, d_model, layers, heads, d_ff, dropout):
        super().__init__()
        d_model = d_model or d_in
        self.proj = nn.Identity() if d_model == d_in else nn.Linear(d_in, d_model)
        self.u0 = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.row = nn.Embedding(grid, d_model)
        self.col = nn.Embedding(grid, d_model)
        layer = nn.TransformerEncoderLayer(d_model, heads, d_ff, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.grid = grid

    def pos(self, idx):
        return self.row(idx // self.grid) + self.col(idx % self.grid)


class Selfie(Task):
    name = "selfie"
    transfer_prefixes = ("trunk.stem.", "trunk.layer1.", "trunk.layer2.", "trunk.layer3.")

    def __init__(self, grid=4, n_masked=4, layers=12, heads=16, d_model=None, d_ff=2048, dropout=0.1, state=None):
        self.grid, self.n_masked = grid, n_masked
        self.head_cfg = dict(d_model=d_model, layers=layers, heads=heads, d_ff=d_ff, dropout=dropout)
        self.n_classes = n_masked

    def build_head(self, trunk):
        return SelfieHead(trunk.dims[2], self.grid, **self.head_cfg)

    def make_batch(self, x, y, gen):
        """One random set of masked locations per batch, as in the reference; the
        targets are those locations, repeated per example."""
        masked = torch.randperm(self.grid ** 2, generator=gen, device=gen.device)[: self.n_masked].to(x.device)
        return x, masked.expand(len(x), -1)

    def loss(self, model, x, masked):
        head = model.head
        n, p = len(x), self.grid ** 2
        patches = patchify(x, self.grid).transpose(1, 2).flatten(0, 1)          # (n·p)×C×h×w
        emb = head.proj(model.features(patches, upto=3)).view(n, p, -1)         # n×p×d
        is_masked = torch.zeros(n, p, dtype=torch.bool, device=x.device).scatter_(1, masked, True)
        # the visible locations in ascending order, without boolean indexing (no host sync)
        visible = torch.argsort(is_masked.to(torch.int8), dim=1, stable=True)[:, : p - self.n_masked]
        vis = torch.gather(emb, 1, visible[..., None].expand(-1, -1, emb.shape[-1])) + head.pos(visible)
        u = head.encoder(torch.cat([head.u0.expand(n, -1, -1), vis], 1))[:, 0]  # n×d
        queries = u[:, None] + head.pos(masked)                                  # n×m×d
        cand = torch.gather(emb, 1, masked[..., None].expand(-1, -1, emb.shape[-1]))
        logits = queries @ cand.transpose(1, 2)                                  # n×m×m
        target = torch.arange(self.n_masked, device=x.device).expand(n, -1)
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(n, -1).sum(1)
        return loss, logits

    def correct(self, logits, masked):
        target = torch.arange(self.n_masked, device=logits.device)
        return (logits.argmax(-1) == target).float().mean(-1)
