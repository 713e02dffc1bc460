"""`train_t2i` on two processes whose clocks disagree, for tests/toy/test_train_t2i_distributed.py (torchrun, gloo):

    python -m torch.distributed.run --nproc-per-node=2 -m tests.toy.t2i_clock_worker OUT

Rank 1's clock runs a thousand times fast, so its share of the time budget ends after a step or two while rank 0's
lasts minutes: the processes must still stop each stage at the same step (one stopping early would meet the
other's gradient all-reduce with its next collective, and hang)."""

import os
import sys
import time

if os.environ.get("RANK") == "1":
    real, t0 = time.time, time.time()
    time.time = lambda: t0 + (real() - t0) * 1000

from freeatm_hf.toy.train_t2i import main  # noqa: E402

main(["--output_dir", sys.argv[1], "--vae_steps", "40", "--decoder_steps", "40", "--unet_steps", "2",
      "--batch_size", "2", "--max_minutes", "10", "--log_every", "1"])
