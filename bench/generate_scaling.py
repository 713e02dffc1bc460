"""Multi-process generation on CPU: images/s of 2 processes ÷ 1, and the cost of writing shards.

    python bench/generate_scaling.py --num_images 32

Both runs use the same total number of CPU threads (1 process × 2 threads vs 2 processes × 1 thread,
launched with torchrun and gloo), so the ratio shows what splitting the work costs or gains, not more
hardware. The shard-write overhead compares the whole job (PNG encoding + Parquet, overlapped with
generation in a writer thread) with the same generation whose rows are thrown away.
"""

import argparse
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(nproc: int, threads: int, out: Path, args) -> float:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = ["-m", "freeatm_hf.generate", "--output_dir", str(out), "--pipeline", "tiny",
           "--num_images", str(args.num_images), "--batch_size", str(args.batch_size),
           "--rows_per_shard", str(args.rows_per_shard), "--num_inference_steps", str(args.steps), "--device", "cpu"]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={port}", *gen]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t


def shard_write_overhead(args) -> tuple[float, float]:
    """Wall time of the full job (generate + write shards, writes overlapped in a thread) vs the same
    generation with the rows thrown away, in this process: the same pipeline and generator settings as the job's,
    its loading timed in both."""
    import torch

    from freeatm_hf.generate import FreeATMGenerator, GenerateConfig
    from freeatm_hf.generate.pipelines import load_pipeline
    from freeatm_hf.generate.run import PromptSource, generate_dataset
    from freeatm_hf.generate.schema import output_to_rows

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as d:
        # The pipeline named: "default" is the shipped shapes model when the package has it, not the tiny one.
        cfg = GenerateConfig(output_dir=d + "/ds", pipeline="tiny", num_images=args.num_images,
                             batch_size=args.batch_size, rows_per_shard=args.rows_per_shard,
                             num_inference_steps=args.steps, device="cpu")
        # replace(), not the instance's __dict__: that holds what __post_init__ resolved from the model folder too
        generate_dataset(dataclasses.replace(cfg, output_dir=d + "/warm", num_images=2))
        t = time.perf_counter()
        generate_dataset(cfg)
        t_job = time.perf_counter() - t
    t = time.perf_counter()
    gen = FreeATMGenerator(load_pipeline(cfg.pipeline, torch.device("cpu"), cfg.torch_dtype), cfg.capture_config(),
                           threshold=cfg.threshold_value, refine=cfg.refine, guidance_scale=cfg.guidance_scale)
    source = PromptSource(cfg)
    for i in range(0, args.num_images, args.batch_size):
        ids = range(i, min(i + args.batch_size, args.num_images))
        output_to_rows(gen(source.batch(ids), [cfg.seed + j for j in ids],
                           num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
                           height=cfg.height, width=cfg.width))
    t_gen = time.perf_counter() - t
    return t_gen, t_job


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--rows_per_shard", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        t1 = run(1, 2, tmp / "one", args)
        t2 = run(2, 1, tmp / "two", args)
    finally:
        shutil.rmtree(tmp)
    n = args.num_images
    print(f"tiny pipeline, {n} images, batch {args.batch_size}, {args.steps} steps, CPU ({os.cpu_count()} cores); "
          "wall time includes start-up and model build")
    print(f"1 process  x 2 threads: {n / t1:.2f} img/s ({t1:.1f} s)")
    print(f"2 processes x 1 thread: {n / t2:.2f} img/s ({t2:.1f} s)")
    print(f"ratio 2 procs / 1 proc: {t1 / t2:.3f}x")
    t_gen, t_job = shard_write_overhead(args)
    print(f"generate only: {n / t_gen:.2f} img/s; with Parquet shards written (in a thread): {n / t_job:.2f} img/s; "
          f"shard-write overhead {(t_job / t_gen - 1) * 100:+.1f} %")


if __name__ == "__main__":
    main()
