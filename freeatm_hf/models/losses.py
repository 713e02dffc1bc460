"""Instance-level contrastive losses (Free-ATM Eq. 3): the same instance in the two views is the positive,
every other instance of the batch (and, for MoCo, of the queue) is a negative.

On several processes the batch is the *global* one, as in SimCLR's large-batch training: every process's
instances are gathered as candidates (with gradients), each process scores its own anchors, and a loss is
scaled so that the average over processes (what DDP's gradient averaging optimises) is the mean over all
instances, however unevenly the instances fall across processes.
"""

import torch
import torch.nn.functional as F


def distributed_world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_count(n: int, device=None) -> int:
    """Instances in the whole batch: `n` summed over processes."""
    return sum(process_counts(n, device))


def process_counts(n: int, device=None) -> list[int]:
    """`n` of every process, in rank order (one collective)."""
    if distributed_world() == 1:
        return [n]
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(distributed_world())]
    torch.distributed.all_gather(counts, torch.tensor([n], device=device))
    return torch.cat(counts).tolist()  # one wait for the device, not one per process


def gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> tuple[torch.Tensor, int]:
    """All processes' `x` (first dimensions may differ) concatenated in rank order, differentiable (the
    backward sums every process's gradient into the local piece), and where the local piece starts. `sizes`:
    every process's first dimension when already known (`process_counts`), saving a collective."""
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    sizes = process_counts(len(x), x.device) if sizes is None else sizes
    padded = F.pad(x, (0, 0, 0, max(sizes) - len(x)))
    pieces = dist_fn.all_gather(padded)
    offset = sum(sizes[: dist.get_rank()])
    return torch.cat([p[:s] for p, s in zip(pieces, sizes, strict=True)]), offset


def instance_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather: bool = True,
                     counts: list[int] | None = None) -> torch.Tensor:
    """NT-Xent over N instance pairs: 2N anchors, each with one positive and 2N−2 negatives.

    With one whole-image instance per image this is exactly SimCLR's loss. With `gather` on several
    processes, N counts the instances of all processes (see the module docstring); `counts`, every process's
    pairs when already known, saves a collective.
    """
    n, world = z1.shape[0], distributed_world()
    if gather and world > 1:  # both views in one collective
        g, offset = gather_with_grad(torch.cat([z1, z2], dim=1), counts)
        g1, g2 = g.split(z1.shape[1], dim=1)
    else:
        g1, g2, offset, world = z1, z2, 0, 1
    total = len(g1)
    if total == 0:  # nothing to contrast (an evaluation batch whose objects were all cropped away)
        return z1.sum() * 0.0
    anchors = F.normalize(torch.cat([z1, z2]), dim=-1)
    candidates = F.normalize(torch.cat([g1, g2]), dim=-1)
    sim = (anchors @ candidates.T).float() / temperature
    local = torch.arange(n, device=z1.device) + offset
    own = torch.cat([local, local + total])  # each anchor's own column
    sim = sim.masked_fill(F.one_hot(own, 2 * total).bool(), float("-inf"))
    target = torch.cat([local + total, local])
    return F.cross_entropy(sim, target, reduction="sum") * world / (2 * total)


def moco_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float,
                  total: int | None = None) -> torch.Tensor:
    """MoCo's InfoNCE: query i's positive is key i, negatives are the queue (already normalized).

    `total`: the number of queries over all processes (default: this process's), for a global mean.
    """
    if len(q) == 0 and not total:  # nothing to contrast: 0, not 0/0
        return q.sum() * 0.0
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    pos = (q * k).sum(-1, keepdim=True)
    neg = q @ queue.T.to(q.dtype)
    logits = torch.cat([pos, neg], 1).float() / temperature
    labels = torch.zeros(len(q), dtype=torch.long, device=q.device)
    world = distributed_world() if total is not None else 1
    return F.cross_entropy(logits, labels, reduction="sum") * world / (total or len(q))
