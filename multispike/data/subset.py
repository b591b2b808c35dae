"""Class-stratified, seeded subsets: one rule for training (``--subset``) and evaluation (``--eval-subset``,
``--limit``), so a subset of a folder tree (whose samples are sorted by class) never holds only its first classes.

Example::

    idx = stratified_indices(labels, 500, seed=0)      # sorted indices, every class within one sample of n/K
"""
from __future__ import annotations

import torch

__all__ = ["stratified_indices"]


def stratified_indices(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A class-stratified, seeded choice of ``n`` indices of ``labels`` (sorted; all of them if ``n >= N``).

    Classes are visited round-robin over a seeded permutation, so every class gets ``⌊n/K⌋`` or ``⌈n/K⌉``
    samples while it has them.
    """
    labels = torch.as_tensor(labels)
    N = labels.shape[0]
    if n >= N:
        return torch.arange(N)
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(N, generator=gen)
    lab = labels[perm]
    within = torch.empty(N, dtype=torch.int64)
    for c in torch.unique(lab):
        pos = (lab == c).nonzero().flatten()
        within[pos] = torch.arange(pos.numel())
    # sort by (rank within class, position in the permutation): round-robin over classes
    key = within * N + torch.arange(N)
    chosen = perm[torch.argsort(key)[:n]]
    return chosen.sort().values
