"""Momentum (EMA) encoders and ring-buffer feature queues, shared by MoCo-v2 and BLIP."""

import torch

from .losses import distributed_world, gather_with_grad


@torch.no_grad()
def ema_update_(pairs, m: float):
    """For each (online, momentum) module pair: momentum ← m·momentum + (1−m)·online, parameters and floating
    buffers (BN statistics) alike; other buffers (indices) are copied."""
    for online, mom in pairs:
        for po, pm in zip(online.parameters(), mom.parameters()):
            pm.mul_(m).add_(po.detach(), alpha=1 - m)
        for bo, bm in zip(online.buffers(), mom.buffers()):
            if bm.dtype.is_floating_point:
                bm.mul_(m).add_(bo, alpha=1 - m)
            else:
                bm.copy_(bo)


@torch.no_grad()
def enqueue_(queues: list[torch.Tensor], ptr: torch.Tensor, rows: list[torch.Tensor]):
    """Write `rows[i]` (gathered from every process) into the ring buffer `queues[i]` at `ptr`, wrapping around;
    the queues share one pointer, which moves on by the number of rows written."""
    if distributed_world() > 1:  # 1-D rows (ids) gathered as one column
        rows = [gather_with_grad(r[:, None])[0][:, 0] if r.dim() == 1 else gather_with_grad(r)[0] for r in rows]
    size = len(queues[0])
    rows = [r[-size:] for r in rows]
    idx = (ptr + torch.arange(len(rows[0]), device=rows[0].device)) % size
    for queue, r in zip(queues, rows):
        queue[idx] = r.to(queue.dtype)
    ptr.copy_((ptr + len(rows[0])) % size)
