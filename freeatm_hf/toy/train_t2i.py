"""Train the shapes text-to-image model on scenes rendered on the fly (on the GPU when there is one).

    accelerate launch -m freeatm_hf.toy.train_t2i --output_dir outputs/shapes-t2i --max_minutes 7 --lr_schedule cosine
    python -m freeatm_hf.toy.train_t2i --output_dir /tmp/smoke --vae_steps 3 --unet_steps 3 --batch_size 4  # CPU

Stage 1 fits the small VAE (reconstruction + a tiny KL), stage 2 trains UNet and text encoder jointly with
v-prediction (the scheduler's prediction type) and 10 % caption dropout (for classifier-free guidance); an EMA of
the UNet is what gets saved.
`--decoder_steps` fine-tunes the VAE decoder alone (as SD's ft-MSE decoders were made): the encoder, and so the
latent space the UNet has learned, stays fixed, so this also improves an already trained model's pictures.
Every scene is new (no epochs, no overfitting). The run stops at `--max_minutes` and always writes a
loadable fp16 pipeline folder with its card, so it fits one 10-minute GPU command; `--resume_from` continues
from such a folder (weights only: a fresh optimizer with warm-up).
"""

import argparse
import copy
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Training scenes come from ShapesWorld(seed=TRAIN_WORLD_OFFSET + --seed): far from the evaluation seeds.
TRAIN_WORLD_OFFSET = 10_000
logger = logging.getLogger(__name__)


def make_parser():
    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.train_t2i", description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True, help="the pipeline folder to write (DiffusionPipeline layout)")
    p.add_argument("--resume_from", default=None, help="a pipeline folder written by this script")
    p.add_argument("--vae_steps", type=int, default=1500, help="autoencoder steps before the UNet's (skipped when resuming: the latent space stays)")
    p.add_argument("--decoder_steps", type=int, default=0,
                   help="fine-tune the VAE decoder alone for this many steps (before the UNet stage)")
    p.add_argument("--unet_steps", type=int, default=100_000, help="upper bound; --max_minutes usually ends it")
    p.add_argument("--batch_size", type=int, default=256, help="scenes per step per process (the CPU recipe uses 32)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of the UNet (AdamW)")
    p.add_argument("--lr_schedule", choices=("constant", "cosine"), default="constant",
                   help="cosine: decay to 0 over the run (by steps or --max_minutes, whichever ends first); "
                        "constant suits a chain of resumed runs")
    p.add_argument("--caption_dropout", type=float, default=0.1,
                   help="share of empty captions (what classifier-free guidance needs)")
    p.add_argument("--ema_decay", type=float, default=0.999, help="of the UNet weights that are saved")
    p.add_argument("--max_minutes", type=float, default=9.0, help="wall-clock budget for both stages")
    p.add_argument("--mixed_precision", default=None, choices=("bf16", "fp16", "no"),
                   help="default: bf16 on CUDA, else no")
    p.add_argument("--save_every_minutes", type=float, default=15.0,
                   help="also write the pipeline folder this often, so a killed run loses little")
    p.add_argument("--seed", type=int, default=0, help="of the weights and the training scenes")
    p.add_argument("--log_every", type=int, default=100, help="steps between loss lines")
    return p


WARMUP_STEPS = 200  # of the UNet stage's learning rate


def unet_lr_factor(step: int, share: float, schedule: str, warmup: int = WARMUP_STEPS) -> float:
    """The UNet stage's learning rate over its peak: a linear warm-up over the first `warmup` steps, then constant
    or a cosine decay to 0 by `share`, the part of the stage done (by steps or by the clock)."""
    decay = 0.5 * (1 + math.cos(math.pi * min(share, 1.0))) if schedule == "cosine" else 1.0
    return min(1.0, (step + 1) / warmup) * decay


def drop_captions(ids: torch.Tensor, empty: torch.Tensor, p: float) -> torch.Tensor:
    """Each row of token ids replaced by the empty caption's with probability `p`: the unconditional prediction
    that classifier-free guidance subtracts is learned on those."""
    drop = torch.rand(len(ids), device=ids.device) < p
    return torch.where(drop[:, None], empty.to(ids.device), ids)


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from `scheduler.add_noise(latents, noise, t)`: what the scheduler reads its
    output as when sampling (its `prediction_type`)."""
    check_prediction_type(scheduler)
    kind = scheduler.config.prediction_type
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, t)
    return noise if kind == "epsilon" else latents


def check_prediction_type(scheduler):
    kind = scheduler.config.prediction_type
    if kind not in ("v_prediction", "epsilon", "sample"):
        raise ValueError(f"the scheduler's prediction_type {kind!r} is not one this script trains "
                         "(v_prediction, epsilon or sample)")


def check_arguments(parser, args):
    """Settings that would train nothing, train NaNs (a learning rate of inf saved an all-NaN UNet) or crash later
    are refused by name, as argparse refuses a mistyped one (exit 2)."""
    if not 0 <= args.caption_dropout <= 1:
        parser.error(f"--caption_dropout {args.caption_dropout}: a share, between 0 and 1")
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f"--lr {args.lr}: a finite learning rate > 0")
    if not 0 <= args.ema_decay < 1:  # nan fails this too
        parser.error(f"--ema_decay {args.ema_decay}: in [0, 1)")
    for name in ("max_minutes", "save_every_minutes"):
        value = getattr(args, name)
        if not value > 0:
            parser.error(f"--{name} {value}: a time > 0")
    for name in ("vae_steps", "decoder_steps", "unet_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} {getattr(args, name)}: a number of steps, 0 or more")
    for name in ("batch_size", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: at least 1")
    if args.resume_from and not Path(args.resume_from).is_dir():
        parser.error(f"--resume_from {args.resume_from}: no such folder (a pipeline folder this script wrote)")
    if args.resume_from:
        from ..generate.pipelines import RECOMMENDATION_FILE

        # Without it the earlier runs are unknown: training would start again at scene 0 and the card would count
        # this run's steps and scenes as the model's only ones ("no scene seen twice").
        if not (Path(args.resume_from) / RECOMMENDATION_FILE).is_file():
            parser.error(f"--resume_from {args.resume_from}: no {RECOMMENDATION_FILE}, which every folder this script "
                         "writes holds (the training facts a resumed run continues from)")


def main(argv=None):
    from accelerate import Accelerator
    from diffusers import DiffusionPipeline
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .model import shapes_components, shapes_pipeline, update_model_folder
    from .world import ShapesWorld

    parser = make_parser()
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    from ..cli import setup_logging

    setup_logging()
    mp = args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")
    acc = Accelerator(mixed_precision=mp)
    out = Path(args.output_dir).resolve()  # a symlink's target, `.` by its name
    if acc.is_main_process:  # the one process that saves
        recover_swap(out)
    acc.wait_for_everyone()  # before any process reads --resume_from
    swap = can_swap(out) if acc.is_main_process else False
    torch.manual_seed(args.seed + acc.process_index)
    start = time.time()
    deadline = start + 60 * args.max_minutes

    previous = None
    if args.resume_from:
        previous = read_training(args.resume_from)
        pipe = DiffusionPipeline.from_pretrained(args.resume_from, dtype=torch.float32)
        comps = {k: getattr(pipe, k) for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")}
    else:
        comps = shapes_components(seed=args.seed)
    vae, unet, text_encoder, tokenizer, scheduler = (comps[k] for k in ("vae", "unet", "text_encoder", "tokenizer",
                                                                         "scheduler"))
    check_prediction_type(scheduler)  # before any stage trains (a resumed folder's scheduler may be another's)
    world = ShapesWorld(seed=TRAIN_WORLD_OFFSET + args.seed)  # training scenes; evaluation refuses this seed
    # Each process draws its own range of scene indices; a resumed run starts past every scene drawn before.
    first_scene = next_scene(previous)
    counter = [acc.process_index * 10**9 + first_scene]

    def batch():
        specs = world.scenes(args.batch_size, start=counter[0])
        counter[0] += args.batch_size
        images, _ = world.render(specs, device=acc.device)
        x = images.to(acc.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, [s.caption for s in specs]

    def fit(name, module, loss_fn, steps, lr, stop_at):
        """Plain AdamW steps on `module`. The VAE's encode/decode are not its forward, so DDP would not see
        them: gradients are averaged over processes by hand."""
        module.requires_grad_(True).train()
        params = [q for q in module.parameters() if q.requires_grad]
        # Prepared, though the module is not: under fp16 `acc.backward` scales the loss, and only the prepared
        # optimizer unscales the gradients and skips a step that overflowed (a raw step wrote NaN weights).
        opt = acc.prepare_optimizer(torch.optim.AdamW(params, lr=lr))
        done = 0
        for done in tqdm(range(1, steps + 1), desc=name, disable=not acc.is_local_main_process):
            x, _ = batch()
            with acc.autocast():
                loss = loss_fn(x)
            acc.backward(loss)
            if acc.num_processes > 1:
                for q in params:
                    if q.grad is not None:
                        torch.distributed.all_reduce(q.grad, op=torch.distributed.ReduceOp.AVG)
            opt.step()
            opt.zero_grad()
            if done % args.log_every == 1 or args.log_every == 1:
                logger.info("%s step %d: loss %.4f", name, done, loss.item())
            # Every process stops at the same step (each reads its own clock): one stopping early would meet the
            # others' gradient all-reduce with its next collective, and the run would hang.
            stop = torch.tensor(float(time.time() > stop_at), device=acc.device)
            if acc.num_processes > 1:
                torch.distributed.all_reduce(stop, op=torch.distributed.ReduceOp.MAX)
            if stop.item():
                logger.info("%s stage stopped at step %d (time budget)", name, done)
                break
        return done

    def vae_loss(x):
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        return F.mse_loss(rec.float(), x) + 1e-6 * post.kl().mean()

    def decoder_loss(x):
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample()
        rec = vae.decode(z).sample.float()
        return F.mse_loss(rec, x) + F.l1_loss(rec, x)

    vae.to(acc.device)
    # Stage 1: the VAE.
    vae_steps_done = 0
    if not args.resume_from and args.vae_steps > 0:
        vae_steps_done = fit("vae", vae, vae_loss, args.vae_steps, 1e-3, start + 0.2 * 60 * args.max_minutes)
        # Unit-variance latents, as SD's scaling factor does for its VAE.
        with torch.no_grad():
            x, _ = batch()
            std = vae.encode(x).latent_dist.sample().std()
        vae.register_to_config(scaling_factor=1.0 / acc.reduce(std, "mean").item())
    # Stage 1b: the decoder alone, with the latent space the UNet sees fixed. Sharp edges matter in this world:
    # a blurred corner turns a triangle into a blob for the shape judge, and blended edge colours read as extra
    # objects.
    decoder_steps_done = 0
    if args.decoder_steps > 0:
        vae.requires_grad_(False)
        decoder_steps_done = fit("decoder", torch.nn.ModuleList([vae.post_quant_conv, vae.decoder]), decoder_loss,
                                 args.decoder_steps, 2e-4, deadline)
    vae.requires_grad_(False).eval()

    # Stage 2: UNet + text encoder.
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    done = [0.0]  # share of the UNet stage done, updated every step

    # Not prepared: accelerate would step a prepared scheduler once per process at every optimizer step, and the
    # warm-up would end num_processes times too early.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: unet_lr_factor(s, done[0], args.lr_schedule))
    unet, text_encoder, opt = acc.prepare(unet, text_encoder, opt)
    # Warm-up keeps the random initial weights from lingering in the EMA of a short (CPU) run.
    ema = EMAModel(acc.unwrap_model(unet).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
    ema.to(acc.device)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    step = 0

    def save():
        if not acc.is_main_process:
            return
        # The EMA weights go into a copy: training continues on the raw ones.
        ema_unet = copy.deepcopy(acc.unwrap_model(unet))
        ema.copy_to(ema_unet.parameters())
        pipe = shapes_pipeline(dict(vae=copy.deepcopy(vae), unet=ema_unet,
                                    text_encoder=copy.deepcopy(acc.unwrap_model(text_encoder)), tokenizer=tokenizer,
                                    scheduler=scheduler))
        pipe.to("cpu", torch.float16)
        # Written beside the folder, then swapped in: a run killed at its time limit mid-save (every few minutes)
        # leaves the last complete save, which `--resume_from` and `freeatm generate` read.
        tmp = out.with_name(f".{out.name}.saving") if swap else out
        if swap:
            shutil.rmtree(tmp, ignore_errors=True)
            if out.is_dir():  # what the save does not write (say a mask evaluation's report) stays with it
                shutil.copytree(out, tmp)
        pipe.save_pretrained(tmp, safe_serialization=True)
        _drop_local_paths(tmp)
        # Totals over every run that led to these weights; `runs` keeps each run's own facts.
        run = dict(unet_steps=step, vae_steps=vae_steps_done, decoder_steps=decoder_steps_done,
                   minutes=round((time.time() - start) / 60, 1), batch_size=args.batch_size,
                   processes=acc.num_processes, lr=args.lr, lr_schedule=args.lr_schedule, ema_decay=args.ema_decay,
                   caption_dropout=args.caption_dropout,
                   device=str(acc.device), scene_start=first_scene,
                   scene_end=counter[0] - acc.process_index * 10**9, resumed_from=args.resume_from,
                   world_seed=TRAIN_WORLD_OFFSET + args.seed)
        update_model_folder(tmp, training=accumulate_training(previous, run))
        if swap:
            swap_in(tmp, out)
        logger.info("saved %s after %d UNet steps (%.1f min)", out, step, (time.time() - start) / 60)

    unet_start = time.time()

    def progress() -> float:
        """Share of the UNet stage done, by steps or by the clock, whichever runs out first. Every process
        takes the largest, so all stop at the same step and decay the learning rate alike."""
        share = max(step / max(args.unet_steps, 1), (time.time() - unet_start) / max(deadline - unet_start, 1e-9))
        if args.unet_steps == 0:
            share = 1.0
        if acc.num_processes > 1:
            t = torch.tensor(share, device=acc.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            share = t.item()
        return share

    last_save = time.time()
    bar = tqdm(total=args.unet_steps, desc="unet", disable=not acc.is_local_main_process)
    while (share := progress()) < 1.0:
        done[0] = share
        x, captions = batch()
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(acc.device)
        ids = drop_captions(ids, empty, args.caption_dropout)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),), device=acc.device)
        noisy = scheduler.add_noise(latents, noise, t)
        target = training_target(scheduler, latents, noise, t)
        with acc.autocast():
            cond = text_encoder(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(pred.float(), target)
        acc.backward(loss)
        acc.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        ema.step(acc.unwrap_model(unet).parameters())
        step += 1
        bar.update(1)
        if step % args.log_every == 0:
            logger.info("unet step %d: loss %.4f (%.1f min)", step, loss.item(), (time.time() - start) / 60)
        if time.time() - last_save > 60 * args.save_every_minutes:
            save()
            last_save = time.time()
    bar.close()
    acc.wait_for_everyone()
    save()
    return step


def can_swap(folder: Path) -> bool:
    """Whether saves can be swapped in by renaming (`swap_in`); else they go into the folder in place, as said
    before training: a mount point cannot be renamed, nor a folder in a parent this user cannot write, and the
    working directory (or one above it) must stay where it is."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    cwd = Path.cwd().resolve()
    why = ("it is a mount point" if os.path.ismount(folder)
           else "its parent is not writable" if not os.access(folder.parent, os.W_OK)
           else "it holds the working directory" if cwd == folder or folder in cwd.parents else None)
    if why:
        logger.warning("%s: saved in place (%s), so a run killed mid-save can leave it half written", folder, why)
    return why is None


def recover_swap(folder: Path):
    """A run killed between `swap_in`'s two renames left the previous save beside the folder: put it back."""
    old = folder.with_name(f".{folder.name}.old")
    if old.is_dir() and not folder.exists():
        old.rename(folder)
        logger.warning("%s: restored from %s (a save was interrupted)", folder, old.name)


def swap_in(new: Path, folder: Path):
    """Put the complete folder `new` in `folder`'s place: two renames, the old one removed after."""
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def _drop_local_paths(folder: Path):
    """A resumed model's configs remember the folder they were loaded from (`_name_or_path`): a path on the
    training machine, meaningless in a shipped or pushed folder.

    The text encoder's `dtype` is set to float32 as well: transformers loads a model in its config's dtype
    while diffusers loads the UNet and VAE in float32, so a plain `DiffusionPipeline.from_pretrained(folder)`
    of fp16 weights would feed fp16 text embeddings to an fp32 UNet and fail. The weights stay fp16 on disk."""
    import json

    for path in Path(folder).glob("*/config.json"):
        cfg = json.loads(path.read_text())
        changed = cfg.pop("_name_or_path", None) is not None
        if cfg.get("model_type") == "clip_text_model" and cfg.get("dtype") not in (None, "float32"):
            cfg["dtype"] = "float32"
            changed = True
        if changed:
            path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def read_training(folder) -> dict | None:
    import json

    from ..generate.pipelines import RECOMMENDATION_FILE

    path = Path(folder) / RECOMMENDATION_FILE
    return json.loads(path.read_text()).get("training") if path.is_file() else None


def next_scene(previous: dict | None) -> int:
    """The first training-scene index a resumed run may use (per process), past every scene its earlier runs drew.
    Runs before `scene_end` was recorded all began at scene 0 and drew a batch per step, plus one (the VAE's
    scaling factor); skipping an unseen scene costs nothing, so that bound is safe."""
    if not previous:
        return 0
    runs = previous.get("runs") or [previous]
    return max(r.get("scene_end", (sum(r.get(k, 0) for k in ("unet_steps", "vae_steps", "decoder_steps")) + 1)
                     * r.get("batch_size", 0)) for r in runs)


def accumulate_training(previous: dict | None, run: dict) -> dict:
    """The training facts of a folder after `run`: step and minute totals over all runs, the last run's settings."""
    if not previous:
        return {**run, "runs": [run]}
    runs = previous.get("runs") or [{k: v for k, v in previous.items() if k != "runs"}]
    totals = {k: sum(r.get(k, 0) for r in [*runs, run]) for k in ("unet_steps", "vae_steps", "decoder_steps")}
    totals["minutes"] = round(sum(r.get("minutes", 0) for r in [*runs, run]), 1)
    return {**run, **totals, "runs": [*runs, run]}


if __name__ == "__main__":
    main()
