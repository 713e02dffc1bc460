"""Train the shapes text-to-image model on scenes rendered on the fly (on the GPU when there is one).

    accelerate launch -m freeatm_hf.toy.train_t2i --output_dir outputs/shapes-t2i --max_minutes 9
    python -m freeatm_hf.toy.train_t2i --output_dir /tmp/smoke --vae_steps 3 --unet_steps 3 --batch_size 4  # CPU

Stage 1 fits the small VAE (reconstruction + a tiny KL), stage 2 trains UNet and text encoder jointly with
v-prediction and 10 % caption dropout (for classifier-free guidance); an EMA of the UNet is what gets saved.
Every scene is new (no epochs, no overfitting). The run stops at `--max_minutes` and always writes a
loadable fp16 pipeline folder with its card, so it fits one 10-minute GPU command; `--resume_from` continues
from such a folder (weights only: a fresh optimizer with warm-up).
"""

import argparse
import copy
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


def make_parser():
    p = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.train_t2i", description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--resume_from", default=None, help="a pipeline folder written by this script")
    p.add_argument("--vae_steps", type=int, default=1500)
    p.add_argument("--unet_steps", type=int, default=100_000, help="upper bound; --max_minutes usually ends it")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--caption_dropout", type=float, default=0.1)
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--max_minutes", type=float, default=9.0, help="wall-clock budget for both stages")
    p.add_argument("--mixed_precision", default=None, help="bf16 / fp16 / no (default: bf16 on CUDA)")
    p.add_argument("--save_every_minutes", type=float, default=15.0,
                   help="also write the pipeline folder this often, so a killed run loses little")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=100)
    return p


def main(argv=None):
    from accelerate import Accelerator
    from diffusers import DiffusionPipeline
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from .model import shapes_components, shapes_pipeline, update_model_folder
    from .world import ShapesWorld

    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    mp = args.mixed_precision or ("bf16" if torch.cuda.is_available() else "no")
    acc = Accelerator(mixed_precision=mp)
    torch.manual_seed(args.seed + acc.process_index)
    start = time.time()
    deadline = start + 60 * args.max_minutes

    if args.resume_from:
        pipe = DiffusionPipeline.from_pretrained(args.resume_from, torch_dtype=torch.float32)
        comps = {k: getattr(pipe, k) for k in ("vae", "unet", "text_encoder", "tokenizer", "scheduler")}
    else:
        comps = shapes_components(seed=args.seed)
    vae, unet, text_encoder, tokenizer, scheduler = (comps[k] for k in ("vae", "unet", "text_encoder", "tokenizer",
                                                                         "scheduler"))
    world = ShapesWorld(seed=10_000 + args.seed)  # training scenes; evaluation uses other seeds
    counter = [acc.process_index * 10**9]

    def batch():
        specs = world.scenes(args.batch_size, start=counter[0])
        counter[0] += args.batch_size
        images, _ = world.render(specs, device=acc.device)
        x = images.to(acc.device).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x, [s.caption for s in specs]

    # Stage 1: the VAE.
    vae_steps_done = 0
    if not args.resume_from and args.vae_steps > 0:
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        vae, opt = acc.prepare(vae, opt)
        for step in tqdm(range(args.vae_steps), desc="vae", disable=not acc.is_local_main_process):
            x, _ = batch()
            with acc.autocast():
                post = acc.unwrap_model(vae).encode(x).latent_dist
                rec = acc.unwrap_model(vae).decode(post.sample()).sample
                loss = F.mse_loss(rec.float(), x) + 1e-6 * post.kl().mean()
            acc.backward(loss)
            opt.step()
            opt.zero_grad()
            vae_steps_done = step + 1
            if step % args.log_every == 0:
                logger.info("vae step %d: loss %.4f", step, loss.item())
            if time.time() > start + 0.2 * 60 * args.max_minutes:
                logger.info("vae stage stopped at step %d (time budget)", step)
                break
        vae = acc.unwrap_model(vae)
        # Unit-variance latents, as SD's scaling factor does for its VAE.
        with torch.no_grad():
            x, _ = batch()
            std = vae.encode(x).latent_dist.sample().std().item()
        vae.register_to_config(scaling_factor=1.0 / std)
    vae.requires_grad_(False).eval().to(acc.device)

    # Stage 2: UNet + text encoder.
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    unet, text_encoder, opt, sched = acc.prepare(unet, text_encoder, opt, sched)
    # Warm-up keeps the random initial weights from lingering in the EMA of a short (CPU) run.
    ema = EMAModel(acc.unwrap_model(unet).parameters(), decay=args.ema_decay, use_ema_warmup=True, power=2 / 3)
    ema.to(acc.device)
    alphas = scheduler.alphas_cumprod.to(acc.device)
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
        out = Path(args.output_dir)
        pipe.save_pretrained(out, safe_serialization=True)
        update_model_folder(out, training=dict(
            unet_steps=step, vae_steps=vae_steps_done, minutes=round((time.time() - start) / 60, 1),
            batch_size=args.batch_size, processes=acc.num_processes, lr=args.lr, ema_decay=args.ema_decay,
            device=str(acc.device), resumed_from=args.resume_from))
        logger.info("saved %s after %d UNet steps (%.1f min)", out, step, (time.time() - start) / 60)

    last_save = time.time()
    bar = tqdm(total=args.unet_steps, desc="unet", disable=not acc.is_local_main_process)
    while step < args.unet_steps and time.time() < deadline:
        x, captions = batch()
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(acc.device)
        drop = torch.rand(len(ids), device=acc.device) < args.caption_dropout
        ids = torch.where(drop[:, None], empty.to(acc.device), ids)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(alphas), (len(latents),), device=acc.device)
        a = alphas[t].sqrt().view(-1, 1, 1, 1)
        s = (1 - alphas[t]).sqrt().view(-1, 1, 1, 1)
        noisy = a * latents + s * noise
        target = a * noise - s * latents  # v-prediction
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


if __name__ == "__main__":
    main()
