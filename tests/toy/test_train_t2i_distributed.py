"""`train_t2i` on two processes (torchrun, gloo on CPU): a stage's time limit ends it on every process at once."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..distributed import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_a_time_limited_stage_stops_at_the_same_step_on_every_process(tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "tests.toy.t2i_clock_worker", str(tmp_path / "t2i")]
    try:  # processes stopping at different steps wait on each other's collectives until killed
        res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the processes hung: one stopped a stage while the other was still training")
    assert res.returncode == 0, res.stderr[-3000:]
    # Rank 1's fast clock ended both stages early, on both processes (rank 0 alone would have run all 40 steps).
    stops = re.findall(r"(vae|decoder) stage stopped at step (\d+)", res.stderr)
    assert stops and all(int(step) < 40 for _, step in stops), res.stderr[-3000:]
    training = json.loads((tmp_path / "t2i" / "freeatm.json").read_text())["training"]
    assert training["vae_steps"] < 40 and training["decoder_steps"] < 40 and training["processes"] == 2
