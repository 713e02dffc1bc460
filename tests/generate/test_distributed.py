"""Generation across processes (torchrun, gloo on CPU) and resume after a real SIGKILL."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ..distributed import free_port

ROOT = Path(__file__).resolve().parents[2]


def gen_args(out, num_images, rows_per_shard, steps=2, batch_size=1):
    return ["--output_dir", str(out), "--num_images", str(num_images), "--batch_size", str(batch_size),
            "--rows_per_shard", str(rows_per_shard), "--num_inference_steps", str(steps), "--device", "cpu"]


def read_rows(folder: Path) -> list[dict]:
    rows = []
    for shard in sorted((folder / "data").glob("train-*.parquet")):
        rows += pq.read_table(shard, columns=["prompt", "seed", "image"]).to_pylist()
    return rows


def env():
    return {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_two_processes_write_every_prompt_exactly_once(tmp_path):
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "freeatm_hf.generate", *gen_args(out, num_images=6, rows_per_shard=1)]
    res = subprocess.run(cmd, env=env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_rows(out)
    assert sorted(r["seed"] for r in rows) == list(range(6))

    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import PromptSource

    source = PromptSource(GenerateConfig(output_dir=str(out)))
    assert {r["seed"]: r["prompt"] for r in rows} == {i: source[i].text for i in range(6)}
    assert (out / "README.md").is_file()  # the card, once, by the main process
    # Shard i is dealt to rank i % 2, said once (the other process logs warnings only).
    assert res.stderr.count("shards to write: rank 0: 3, rank 1: 3 (0 of 6 in total done)") == 1
    assert res.stdout.count("dataset written to") == 1  # said once, not by every process


def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path):
    args = dict(num_images=12, rows_per_shard=2, steps=6, batch_size=2)
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "freeatm_hf.generate", *gen_args(reference, **args)], env=env(), cwd=ROOT,
                   check=True, capture_output=True, timeout=600)

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "freeatm_hf.generate", *gen_args(out, **args)], env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "data").glob("*.parquet")):
        time.sleep(0.01)
    time.sleep(0.3)  # kill somewhere inside a later shard
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "data").glob("*.parquet")))
    assert 0 < done < 6, f"the kill should land mid-run, found {done} of 6 shards"
    assert not (out / "README.md").exists()

    res = subprocess.run([sys.executable, "-m", "freeatm_hf.generate", *gen_args(out, **args)], env=env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    resumed, expected = read_rows(out), read_rows(reference)
    assert [r["seed"] for r in resumed] == list(range(12))
    assert [(r["seed"], r["prompt"], r["image"]["bytes"]) for r in resumed] == [
        (r["seed"], r["prompt"], r["image"]["bytes"]) for r in expected]
    assert not list((out / ".freeatm" / "tmp").glob("*"))


def test_a_second_run_into_a_folder_being_written_is_refused_and_the_first_one_is_unharmed(tmp_path):
    """Two runs started into one folder by mistake: the second, with other settings, replaced the first's
    settings.json (no shard was written yet) and both wrote shards of the same names: the folder ended up a mix of
    both runs' rows (seeds repeated), its settings one run's, its card the other's, and both runs exited 0."""
    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import generate_dataset

    args = dict(num_images=6, rows_per_shard=2, steps=6, batch_size=2)
    reference = tmp_path / "reference"
    subprocess.run([sys.executable, "-m", "freeatm_hf.generate", *gen_args(reference, **args)], env=env(), cwd=ROOT,
                   check=True, capture_output=True, timeout=600)
    out = tmp_path / "ds"
    first = subprocess.Popen([sys.executable, "-m", "freeatm_hf.generate", *gen_args(out, **args)], env=env(),
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / ".freeatm" / "settings.json").exists():
        time.sleep(0.01)
    settings = (out / ".freeatm" / "settings.json").read_text()
    with pytest.raises(ValueError, match=re.escape(f"{out} is being written by another freeatm generate (process "
                                                   f"{first.pid} on ")):
        generate_dataset(GenerateConfig(output_dir=str(out), num_images=6, rows_per_shard=2, num_inference_steps=2,
                                        seed=5, device="cpu"))
    assert first.poll() is None, "the first run should still be running when the second is refused"
    assert (out / ".freeatm" / "settings.json").read_text() == settings
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert [(r["seed"], r["image"]["bytes"]) for r in read_rows(out)] == [
        (r["seed"], r["image"]["bytes"]) for r in read_rows(reference)]


@pytest.mark.parametrize("world_size", [1, 3])
def test_streaming_split_by_node_covers_each_row_once(tmp_path, world_size):
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import generate_dataset

    out = tmp_path / "ds"
    generate_dataset(GenerateConfig(output_dir=str(out), num_images=6, batch_size=3, rows_per_shard=2,
                                    num_inference_steps=2, device="cpu"))
    seen = []
    for rank in range(world_size):
        ds = load_dataset(str(out), split="train", streaming=True)
        seen += [r["seed"] for r in split_dataset_by_node(ds, rank=rank, world_size=world_size)]
    assert sorted(seen) == list(range(6))


def test_a_push_that_fails_on_the_main_process_releases_the_others(tmp_path):
    """Generation is done and the card written when the push fails (no Hub here): the run fails with the
    connection error, the rows and card stay for `freeatm push` to send later. The other ranks are done once every
    shard is written: they wait neither for the card nor for the push (hours for a large dataset, past the
    distributed timeout)."""
    out = tmp_path / "dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}",
           "-m", "freeatm_hf.generate", *gen_args(out, num_images=2, rows_per_shard=1), "--push_to_hub", "me/x"]
    hub = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_x",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(tmp_path / "hf_home")}
    t = time.time()
    res = subprocess.run(cmd, env={**env(), **hub}, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode != 0 and time.time() - t < 300
    assert "Connect" in res.stderr or "connect" in res.stderr, res.stderr[-2000:]
    assert len(read_rows(out)) == 2 and (out / "README.md").is_file()
