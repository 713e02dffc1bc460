"""Throughput and memory of generation with attention capture ÷ the same plain diffusers pipeline.

    python bench/generate_overhead.py                         # H100: SD1.5-sized, 512 px, 25 steps, batch 16
    python bench/generate_overhead.py --compile               # + torch.compile of the UNet with capture inside
    python bench/generate_overhead.py --compile_only          # the compiled figures alone (eager plain alongside)
    python bench/generate_overhead.py --preset tiny --device cpu --batch_size 4 --steps 10   # smoke run on CPU

The SD1.5-sized pipeline has random weights (the compute is that of the trained model). Plain and
capture runs alternate (ABAB…) so drift hits both equally; the ratio is of medians.
"""

import argparse
import statistics
import time

import numpy as np
import torch


def build(preset: str, device: str, dtype: torch.dtype):
    from diffusers import StableDiffusionPipeline

    if preset == "sd15":
        from freeatm_hf.generate.tiny import sd15_sized_components

        comps = sd15_sized_components(dtype=dtype)
        pipe = StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        from freeatm_hf.generate.tiny import tiny_pipeline

        pipe = tiny_pipeline()
        pipe.to(dtype=dtype) if dtype != torch.float32 else None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=["sd15", "tiny"], default="sd15")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float16 (default on GPU) / float32")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed batches per variant")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(unet) with capture inside")
    p.add_argument("--compile_only", action="store_true",
                   help="only the compiled figures (eager plain timed in the same rounds, as their reference)")
    args = p.parse_args()

    from freeatm_hf.generate import FreeATMGenerator
    from freeatm_hf.prompts import ScenePrompts

    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if args.device.startswith("cuda") else torch.float32)
    pipe = build(args.preset, args.device, dtype)
    gen = FreeATMGenerator(pipe, refine="none")
    refining = FreeATMGenerator(pipe, refine="guided")  # + guided filter of every map at image resolution
    prompts = ScenePrompts(seed=0).take(args.batch_size)
    seeds = list(range(args.batch_size))
    kw = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, height=args.height, width=args.width,
              output_type="np")
    cuda = args.device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def plain(**over):
        g = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe([q.text for q in prompts], generator=g, **{**kw, **over}).images

    def captured(**over):
        return gen(prompts, seeds, **{**kw, **over}).images

    def refined():
        return refining(prompts, seeds, **kw).images

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return time.perf_counter() - t, out

    def peak(fn):
        if not cuda:
            return float("nan"), fn()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        out = fn()
        return torch.cuda.max_memory_allocated() / 2**20, out

    dev = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {dev}; preset {args.preset}, {dtype}, batch {args.batch_size}, {args.steps} steps, "
          f"CFG {args.guidance}, repeats {args.repeats}", flush=True)
    if not args.compile_only:
        eager_figures(args, plain, captured, refined, timed, peak, cuda)
    if args.compile or args.compile_only:
        compiled_figures(args, pipe, plain, captured, timed)


def eager_figures(args, plain, captured, refined, timed, peak, cuda):
    # Warm-up, memory and identity checks. Peak memory of the whole call (the VAE decode of the batch may set
    # it) and of the denoising alone (latents out), where the capture's own allocations live.
    # The capture goes first: the process's first call also allocates what lasts (workspaces, the attention
    # store), and those one-off bytes should weigh against the capture's figure, not flatter it.
    mem_capture, img_capture = peak(captured)
    mem_plain, img_plain = peak(plain)
    identical = np.array_equal(np.asarray(img_plain), np.asarray(img_capture), equal_nan=True)
    lat_plain, _ = peak(lambda: plain(output_type="latent"))
    lat_capture, _ = peak(lambda: captured(output_type="latent"))
    refined()  # warm-up
    times = {"plain": [], "capture": [], "refined": []}
    for _ in range(args.repeats):
        times["plain"].append(timed(plain)[0])
        times["capture"].append(timed(captured)[0])
        times["refined"].append(timed(refined)[0])
    ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
    rounds = [p / c for p, c in zip(times["plain"], times["capture"])]  # capture/plain speed, round by round

    # Peaks are the CUDA allocator's: a CPU run has none to report (the process's RSS high-water mark cannot be reset
    # between the calls).
    peak_text = {k: f"peak {m:.0f} MiB" if cuda else "peak n/a on CPU" for k, m in (("plain", mem_plain),
                                                                                  ("capture", mem_capture))}
    print(f"plain diffusers      : {ips['plain']:.3f} img/s, {peak_text['plain']}")
    print(f"with capture         : {ips['capture']:.3f} img/s, {peak_text['capture']}")
    print(f"ratio capture/plain  : {ips['capture'] / ips['plain']:.4f}x (rounds {min(rounds):.4f}-{max(rounds):.4f})   "
          f"images bit-identical: {identical}")
    print(f"capture + refine     : {ips['refined']:.3f} img/s, ratio {ips['refined'] / ips['plain']:.4f}x plain "
          f"(guided filter of each map at image resolution, on {args.device})")
    if cuda:
        print(f"extra peak memory    : {mem_capture - mem_plain:+.0f} MiB ({(mem_capture / mem_plain - 1) * 100:+.2f} %) "
              f"whole call; {lat_capture - lat_plain:+.0f} MiB ({(lat_capture / lat_plain - 1) * 100:+.2f} %) of "
              f"{lat_plain:.0f} MiB denoising alone (latents out)")


def compiled_figures(args, pipe, plain, captured, timed):
    """Compiled plain and compiled capture against eager plain, all three in the same rounds (the same clocks and
    temperature), after two warm-up calls of each compiled variant; the graph count before and after the timed
    rounds shows that no recompile was timed."""
    from torch._dynamo.utils import counters

    eager_unet = pipe.unet
    compiled_unet = torch.compile(eager_unet)

    def on(unet, fn):
        def call():
            pipe.unet = unet
            return fn()
        return call

    variants = {"eager plain": on(eager_unet, plain), "compiled plain": on(compiled_unet, plain),
                "compiled capture": on(compiled_unet, captured)}
    t = time.perf_counter()
    for _ in range(2):
        for name in ("compiled capture", "compiled plain"):
            variants[name]()
    variants["eager plain"]()
    graphs = counters["stats"]["unique_graphs"]
    print(f"compile warm-up      : {time.perf_counter() - t:.0f} s, {graphs} graphs", flush=True)
    times = {k: [] for k in variants}
    for r in range(args.repeats):  # the figures so far after every round: a cut-off run still reports
        for name, fn in variants.items():
            times[name].append(timed(fn)[0])
        ips = {k: args.batch_size / statistics.median(v) for k, v in times.items()}
        print(f"after round {r + 1}: compiled plain {ips['compiled plain']:.3f} img/s "
              f"({ips['compiled plain'] / ips['eager plain']:.3f}x eager plain), compiled + capture "
              f"{ips['compiled capture']:.3f} img/s ({ips['compiled capture'] / ips['eager plain']:.3f}x eager plain, "
              f"{ips['compiled capture'] / ips['compiled plain']:.4f}x compiled plain); eager plain "
              f"{ips['eager plain']:.3f} img/s", flush=True)
    recompiled = counters["stats"]["unique_graphs"] - graphs
    print(f"graphs compiled during the timed rounds: {recompiled}" + (" (the figures include compiling)"
                                                                     if recompiled else ""), flush=True)


if __name__ == "__main__":
    main()
