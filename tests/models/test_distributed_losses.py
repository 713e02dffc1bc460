"""The contrastive losses on several processes (gloo, CPU): the batch is the global one."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from freeatm_hf.models.losses import gather_with_grad, instance_nt_xent, moco_info_nce
from freeatm_hf.models.momentum import enqueue_

from ..distributed import free_port

SIZES = (3, 5)  # instances per process: uneven on purpose
T = 0.2


def data():
    g = torch.Generator().manual_seed(0)
    n = sum(SIZES)
    return (torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g),
            torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=-1))


def worker(rank, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(SIZES))
    z1, z2, q, queue = data()
    lo, hi = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    a, b = z1[lo:hi].clone().requires_grad_(), z2[lo:hi].clone().requires_grad_()
    loss = instance_nt_xent(a, b, T)
    loss.backward()
    mq = q[lo:hi].clone().requires_grad_()
    m = moco_info_nce(mq, z2[lo:hi], queue, T, total=sum(SIZES))
    m.backward()
    with torch.no_grad():  # as MoCo's queue gathers keys
        gathered, offset = gather_with_grad(z2[lo:hi])
    # Feature rows and their ids (1-D, integer) go into the ring buffers from every process, in rank order.
    feats, ids, ptr = torch.zeros(10, 8), torch.full((10,), -1), torch.tensor(4)
    enqueue_([feats, ids], ptr, [z2[lo:hi], torch.arange(lo, hi) + 100])
    torch.save({"loss": loss.detach(), "g1": a.grad, "g2": b.grad, "moco": m.detach(), "gq": mq.grad,
                "gathered": gathered, "offset": offset, "queue": (feats, ids, ptr)},
               os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_losses_over_two_processes_equal_the_single_process_loss_of_the_whole_batch(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=len(SIZES), join=True)
    res = [torch.load(tmp_path / f"{r}.pt") for r in range(len(SIZES))]
    world = len(SIZES)
    z1, z2, q, queue = data()
    a, b, mq = z1.clone().requires_grad_(), z2.clone().requires_grad_(), q.clone().requires_grad_()
    ref = instance_nt_xent(a, b, T)  # one process, the whole batch: every instance a negative of every other
    ref.backward()
    ref_moco = moco_info_nce(mq, z2, queue, T)
    ref_moco.backward()
    # DDP averages over processes: the mean of the per-process losses and gradients is the global one, even
    # though the processes hold 3 and 5 instances.
    torch.testing.assert_close(sum(r["loss"] for r in res) / world, ref.detach())
    torch.testing.assert_close(sum(r["moco"] for r in res) / world, ref_moco.detach())
    torch.testing.assert_close(torch.cat([r["g1"] for r in res]) / world, a.grad)
    torch.testing.assert_close(torch.cat([r["g2"] for r in res]) / world, b.grad)
    torch.testing.assert_close(torch.cat([r["gq"] for r in res]) / world, mq.grad)
    # Every process sees all instances in rank order, whatever their counts.
    assert [r["offset"] for r in res] == [0, SIZES[0]]
    for r in res:
        torch.testing.assert_close(r["gathered"], z2)
        feats, ids, ptr = r["queue"]  # 8 rows from position 4 of 10: slots 4..9, then 0..1
        order = [4, 5, 6, 7, 8, 9, 0, 1]
        torch.testing.assert_close(feats[order], z2)
        assert ids.tolist() == [106, 107, -1, -1, 100, 101, 102, 103, 104, 105] and ptr.item() == 2


def simclr_worker(rank, port, out_dir, batches):
    import torch.distributed as dist

    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(batches))
    torch.manual_seed(0)
    model = SimCLRModel(SimCLRConfig(backbone="resnet18", pooling="image", proj_hidden_dim=16, proj_dim=8)).train()
    x = torch.randn(batches[rank], 3, 64, 64)
    out = model(x, x.flip(-1))
    out.loss.backward()
    torch.save(out.loss.detach(), os.path.join(out_dir, f"simclr{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("batches, skipped", [((1, 3), True), ((2, 3), False)])
def test_simclr_without_synchronised_batch_norm_skips_a_step_where_a_process_holds_one_instance(
        tmp_path, batches, skipped):
    """Off the GPU (gloo) the head's batch norm stays per process and cannot normalise one sample: every process
    skips that step together (one raising would leave the other waiting in a collective)."""
    mp.spawn(simclr_worker, args=(free_port(), str(tmp_path), batches), nprocs=2, join=True)
    losses = [torch.load(tmp_path / f"simclr{r}.pt") for r in range(2)]
    assert all((loss == 0).item() for loss in losses) == skipped
