"""What every benchmark here shares: the device setup and the alternating (ABAB) timing of variants."""

import statistics
import time

import torch


def setup(device_name: str):
    """`(device, cuda, dtype, sync, description)`: bf16 on CUDA, fp32 on CPU."""
    device = torch.device(device_name)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    desc = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    return device, cuda, torch.bfloat16 if cuda else torch.float32, sync, desc


def throughput(variants: dict, items_per_call: int, calls: int, sync, rounds: int = 3, warmup: int = 1) -> dict:
    """Items/s of each variant (a no-argument callable), timed in alternating rounds so that drift hits all
    variants alike; the median round counts. The figures so far are printed after every round, so that a bench
    cut off by its time cap still reports."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    first = next(iter(variants))
    for r in range(rounds):
        for k, fn in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[k].append((time.perf_counter() - t) / calls)
        ips = {k: items_per_call / statistics.median(v) for k, v in times.items()}
        print(f"after round {r + 1}: " + ", ".join(f"{k} {v:.1f}/s ({v / ips[first]:.3f}x {first})"
                                                   for k, v in ips.items()), flush=True)
    return ips


def default_workers(requested: int | None) -> int:
    import os

    return requested if requested is not None else max(1, (os.cpu_count() or 2) - 1)


def smooth_image(rng, side: int):
    """A picture with a natural image's amount of detail: smooth colour fields (low-resolution noise, upscaled) with
    a little grain. Uniform noise would make every PNG/JPEG several times larger, and its decoding the bottleneck
    of an end-to-end figure no real dataset would have."""
    import numpy as np
    from PIL import Image

    low = Image.fromarray(rng.integers(0, 255, (max(side // 16, 2),) * 2 + (3,), dtype=np.uint8))
    img = np.asarray(low.resize((side, side), Image.BICUBIC), dtype=np.int16) + rng.integers(-6, 7, (side, side, 3))
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def random_freeatm_rows(n: int, side: int, seed: int = 0, objects: int = 2) -> list[dict]:
    """Rows in the freeatm dataset schema: `smooth_image` pictures and `objects` random 64×64 attention maps each."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = smooth_image(rng, side)
        att = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
        rows.append({"image": img, "prompt": "", "label": -1, "seed": i, "truncated_objects": [],
                     "objects": [{"name": "x", "token_indices": [1], "attention": att, "bbox": None, "area": 0.0,
                                  "attention_peak": 0.5}] * objects})
    return rows


def warm_steps(workers: int) -> int:
    """Steps left out of an end-to-end figure: the batches the workers built before the clock started (two each,
    DataLoader's prefetch factor), which would otherwise count as made in no time."""
    return 2 * max(workers, 1) + 2


def timing_loader(ds, batch_size: int, workers: int, collate_fn, device):
    """A DataLoader of one long epoch drawn with replacement from `ds` (a few hundred encoded rows): the warm-up
    (`warm_steps`) and then at least three batches per worker, so neither epoch restarts (each a stall of a whole
    batch build) nor workers left idle by a short epoch enter the end-to-end figure."""
    import torch

    n = (warm_steps(workers) + 3 * max(workers, 1) + 4) * batch_size
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=n,
                                             generator=torch.Generator().manual_seed(0))
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                       collate_fn=collate_fn, pin_memory=device.type == "cuda", drop_last=True)


def loader_throughput(loader, step, batch_size: int, device, sync) -> float:
    """Items/s of `step(batch)` fed by `loader` (batches moved to `device`), the `warm_steps` not counted."""
    skip = warm_steps(loader.num_workers)
    steps, t0, counted = 0, None, 0
    for batch in loader:  # one epoch: `timing_loader` makes it long enough
        step({k: v.to(device, non_blocking=True) for k, v in batch.items()})
        steps += 1
        if steps == skip:
            sync()
            t0 = time.perf_counter()
        elif t0 is not None:
            counted += 1
    sync()
    return counted * batch_size / (time.perf_counter() - t0)
