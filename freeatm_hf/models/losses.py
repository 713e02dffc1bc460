"""Instance-level contrastive losses (Free-ATM Eq. 3): the same instance in the two views is the positive,
every other instance of the batch (and, for MoCo, of the queue) is a negative."""

import torch
import torch.nn.functional as F


def instance_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over N instance pairs: 2N anchors, each with one positive and 2N−2 negatives.

    With one whole-image instance per image this is exactly SimCLR's loss.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim.float(), target)


def moco_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo's InfoNCE: query i's positive is key i, negatives are the queue (already normalized)."""
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    pos = (q * k).sum(-1, keepdim=True)
    neg = q @ queue.T.to(q.dtype)
    logits = torch.cat([pos, neg], 1).float() / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
