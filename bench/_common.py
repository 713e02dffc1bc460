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
    variants alike; the median round counts."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for k, fn in variants.items():
            sync()
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            times[k].append((time.perf_counter() - t) / calls)
    return {k: items_per_call / statistics.median(v) for k, v in times.items()}
