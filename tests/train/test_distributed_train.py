"""Training on two processes (torchrun, gloo on CPU): each process its own random draws and its own rows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..distributed import free_port

ROOT = Path(__file__).resolve().parents[2]
ROWS = 8  # the example dataset's: 2 steps × 2 rows × 2 processes


def launch(method: str, out: Path) -> list[dict]:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "tests.train.ddp_worker", method, str(out)]
    res = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(2)]


def assert_each_row_once(ranks: list[dict]):
    rows = [row for r in ranks for row in r["rows"]]
    assert len(rows) == ROWS and len(set(rows)) == ROWS, [r["rows"] for r in ranks]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["mae", "simclr"])
def test_each_process_draws_its_own_masks_and_jitter_over_a_shared_shuffle(method, tmp_path):
    ranks = launch(method, tmp_path)
    # MAE's masks / the batched colour jitter (per step, per view): with one seed everywhere they were the same
    # on both processes.
    drawn = [r["drawn"] for r in ranks]
    assert drawn[0] and len(drawn[0]) == len(drawn[1]) and drawn[0] != drawn[1]
    # The reseed comes after the sampler took its seed: the processes still split one shuffle between them.
    assert_each_row_once(ranks)


@pytest.mark.timeout(600)
def test_streaming_splits_the_stream_between_processes(tmp_path):
    # Dispatched from the main process, batches padded to different instance counts could not be concatenated.
    ranks = launch("stream", tmp_path)
    assert [r["steps"] for r in ranks] == [2, 2]
    assert_each_row_once(ranks)
