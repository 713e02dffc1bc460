"""Momentum (EMA) encoders and ring-buffer feature queues, shared by MoCo-v2 and BLIP."""

import logging

import torch

from .losses import distributed_world, gather_with_grad, process_counts

logger = logging.getLogger(__name__)
# Training forwards with no momentum update at all after which a model says its callback is missing: far more than
# any gradient accumulation, and early in any real run.
UNMOVED_AFTER = 50


class MomentumWatch:
    """For a model whose momentum encoders move only through `momentum_update()`, called by a Trainer callback after
    each optimizer step: one warning when it has trained `UNMOVED_AFTER` forwards and they never moved (a plain
    `Trainer` without the callback trains against the starting weights, without a word)."""

    _moved, _unmoved_forwards = False, 0

    def _note_moved(self):
        self._moved = True

    def _note_training_forward(self, callbacks: str):
        # Not counted in a compiled forward: a changing count would be a guard, and every step a recompilation.
        if self._moved or not self.training or torch.compiler.is_compiling():
            return
        self._unmoved_forwards += 1
        if self._unmoved_forwards == UNMOVED_AFTER:
            logger.warning("%s has trained %d forwards and its momentum encoders never moved: add %s to the "
                           "Trainer's callbacks (from freeatm_hf.train.callbacks), or call momentum_update() after "
                           "each optimizer step", type(self).__name__, UNMOVED_AFTER, callbacks)


@torch.no_grad()
def ema_update_(pairs, m: float):
    """For each (online, momentum) module pair: momentum ← m·momentum + (1−m)·online, parameters and floating
    buffers (BN statistics) alike; other buffers (indices) are copied."""
    online_t, mom_t = [], []
    for online, mom in pairs:
        for o, t in [*zip(online.parameters(), mom.parameters()), *zip(online.buffers(), mom.buffers())]:
            if t.dtype.is_floating_point:
                online_t.append(o.detach())
                mom_t.append(t)
            else:
                t.copy_(o)
    if mom_t:  # on a GPU a few fused launches instead of two per tensor (ResNet-50: ~320, every step); the same
        # arithmetic, so the same values
        torch._foreach_mul_(mom_t, m)
        torch._foreach_add_(mom_t, online_t, alpha=1 - m)


@torch.no_grad()
def enqueue_(queues: list[torch.Tensor], ptr: torch.Tensor, rows: list[torch.Tensor]):
    """Write `rows[i]` (gathered from every process) into the ring buffer `queues[i]` at `ptr`, wrapping around;
    the queues share one pointer, which moves on by the number of rows written."""
    if distributed_world() > 1:  # 1-D rows (ids) gathered as one column; all rows share one count
        sizes = process_counts(len(rows[0]), rows[0].device)
        rows = [gather_with_grad(r[:, None], sizes)[0][:, 0] if r.dim() == 1 else gather_with_grad(r, sizes)[0]
                for r in rows]
    size = len(queues[0])
    rows = [r[-size:] for r in rows]
    idx = (ptr + torch.arange(len(rows[0]), device=rows[0].device)) % size
    for queue, r in zip(queues, rows):
        queue[idx] = r.to(queue.dtype)
    ptr.copy_((ptr + len(rows[0])) % size)
