"""Two training steps on each of several processes, for tests/train/test_distributed_train.py (run under
torchrun, gloo on CPU):

    python -m torch.distributed.run --nproc-per-node=2 -m tests.train.ddp_worker mae|simclr|stream OUT

Each process writes OUT/<rank>.json: the rows (prompts) of the batches it trained on, and what it drew at
random (MAE masks, the on-device colour jitter)."""

import json
import os
import sys

import torch
from transformers import TrainingArguments

from freeatm_hf.spaces import space_dir

DATA = str(space_dir() / "example_dataset")  # 8 rows: 2 steps of 2 rows on each of 2 processes read them all


def record_rows(train_module, collate_module, collate_name, seen):
    """The transform passes each row's prompt along; the collate function (what this process trains on, where a
    streaming transform may also see other processes' rows) notes and drops it."""
    make_transform = train_module.make_transform

    def tagged_make_transform(*args, **kwargs):
        transform = make_transform(*args, **kwargs)
        return lambda batch: {**transform(batch), "row": list(batch["prompt"])}

    collate = getattr(collate_module, collate_name)

    def noting_collate(samples):
        seen.extend(s.pop("row") for s in samples)
        return collate(samples)

    train_module.make_transform = tagged_make_transform
    setattr(collate_module, collate_name, noting_collate)


def main(method: str, out: str):
    torch.set_num_threads(1)
    rec = {"rows": [], "drawn": []}
    targs = TrainingArguments(output_dir=os.path.join(out, "run"), per_device_train_batch_size=2, max_steps=2,
                              save_strategy="no", report_to="none", dataloader_num_workers=0, logging_steps=1, seed=0)
    if method == "mae":
        import freeatm_hf.models.mae as models_mae
        import freeatm_hf.train.mae as train_mae

        forward = models_mae.MAEModel.forward

        def noting_forward(self, *args, **kwargs):
            out = forward(self, *args, **kwargs)
            rec["drawn"].append(out.mask.int().tolist())
            return out

        models_mae.MAEModel.forward = noting_forward
        record_rows(train_mae, train_mae, "collate", rec["rows"])
        train_mae.train(train_mae.MAEArguments(dataset=DATA, model_size="tiny", image_size=32, patch_size=8), targs)
    else:
        import freeatm_hf.data.collate as collate
        import freeatm_hf.data.gpu_augment as gpu_augment
        import freeatm_hf.train.contrastive as contrastive

        sample = gpu_augment.BatchPhotometric.sample

        def noting_sample(self, b, device):
            p = sample(self, b, device)
            rec["drawn"].append(p["brightness"].tolist())
            return p

        gpu_augment.BatchPhotometric.sample = noting_sample
        record_rows(contrastive, collate, "collate_two_views", rec["rows"])
        args = contrastive.ContrastiveArguments(dataset=DATA, backbone="resnet18", image_size=32, proj_hidden_dim=16,
                                                proj_dim=8, optimizer="sgd", streaming=method == "stream")
        trainer = contrastive.train("simclr", args, targs)
        rec["steps"] = trainer.state.global_step
    with open(os.path.join(out, f"{os.environ['RANK']}.json"), "w") as f:
        json.dump(rec, f)
    import torch.distributed as dist

    if dist.is_initialized():  # a gloo group left to interpreter exit can abort there ("terminate called ...")
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
