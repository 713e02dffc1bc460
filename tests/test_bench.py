"""The one GPU call (bench/run_gpu.sh) names scripts and flags that exist: a renamed flag fails here, not after
a device has been booked."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_run_gpu_calls_existing_scripts_with_their_own_flags():
    script = (ROOT / "bench" / "run_gpu.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "bench" / "run_gpu.sh")], check=True)
    calls = re.findall(r"^run (\w+) (\d+) (\d+) (bench/\S+\.py)(.*)$", script, flags=re.MULTILINE)
    assert len(calls) >= 8
    assert sum(int(cap) for _, cap, _, _, _ in calls[:3]) < 510  # generation and MM-DiT fit the default deadline
    assert all(int(least) <= int(cap) for _, cap, least, _, _ in calls)
    for name, _, _, path, args in calls:
        assert (ROOT / path).is_file(), path
        used = set(re.findall(r"(--[a-z_]+)", args))
        if used:
            help_text = subprocess.run([sys.executable, str(ROOT / path), "--help"], capture_output=True, text=True,
                                       cwd=ROOT, check=True).stdout
            assert all(flag in help_text for flag in used), (name, used)


def _bench(script: str, *args: str) -> str:
    """A bench's stdout at a smoke size on the CPU; its stderr named when it fails."""
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--device", "cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _figure(text: str, label: str) -> float:
    return float(re.search(rf"^{re.escape(label)}\s*: ([\d.]+)", text, flags=re.MULTILINE).group(1))


def test_blip_step_runs_and_its_ratio_is_of_its_own_figures():
    out = _bench("blip_step.py", "--size", "tiny", "--image_size", "32", "--batch_size", "4", "--steps", "1")
    none, position = _figure(out, "plain captions"), _figure(out, "position prompts")  # printed to 0.1
    assert (position - 0.05) / (none + 0.05) - 5e-4 <= _figure(out, "ratio") <= (position + 0.05) / (none - 0.05) + 5e-4


def test_run_gpu_runs_the_benches_loudly_when_its_wheels_do_not_import(tmp_path):
    """The one GPU call: wheels not carried (or datasets broken by the image's pyarrow) must not cost the figures of
    the benches that can run without them; the log says so first."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "python3").write_text('#!/bin/sh\nif [ "$1" = -c ]; then echo "No module named datasets" >&2; exit 1; fi\n'
                                   'if [ "$1" = -m ]; then exit 1; fi\necho "figure of $1"\n')
    (stubs / "nvidia-smi").write_text("#!/bin/sh\necho H200\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "bench").symlink_to(ROOT / "bench")
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "bench/run_gpu.sh", str(tmp_path / "out"), "mmdit_sd3", "contrastive_step"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=60)
    log = (tmp_path / "out" / "bench.txt").read_text()
    assert done.returncode == 0, log + done.stderr
    assert "!! no wheels" in log and "!! diffusers/datasets do not import" in log
    assert "figure of bench/mmdit_overhead.py" in log and "figure of bench/contrastive_step.py" in log
    assert "figure of bench/generate_overhead.py" not in log  # only the benches named


def test_generate_scaling_compares_the_job_with_the_same_generation(monkeypatch):
    """The shard-write overhead is the job ÷ the same generation with its rows thrown away: the same pipeline, loaded
    inside both timed spans (a clock that only the loads move reads the same), and a generator set as the job's."""
    import argparse
    import types

    import freeatm_hf.generate as generate
    import freeatm_hf.generate.pipelines as pipelines
    import freeatm_hf.generate.run as run

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import generate_scaling

    clock, loaded, made = [0.0], [], []
    real_load, real_gen = pipelines.load_pipeline, generate.FreeATMGenerator

    def load(spec, *args, **kwargs):
        loaded.append(spec)
        clock[0] += 100.0
        return real_load(spec, *args, **kwargs)

    class Recorded(real_gen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.refine, self.guidance_scale, self.threshold, self.store.config))

    for module in (pipelines, run):
        monkeypatch.setattr(module, "load_pipeline", load)
    for module in (generate, run):
        monkeypatch.setattr(module, "FreeATMGenerator", Recorded)
    monkeypatch.setattr(generate_scaling, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    t_gen, t_job = generate_scaling.shard_write_overhead(
        argparse.Namespace(num_images=2, batch_size=2, rows_per_shard=2, steps=2))
    assert loaded == ["tiny"] * 3  # the warm-up job, the timed job, the generation alone: the documented pipeline
    assert made[1] == made[2]
    assert t_gen == t_job == 100.0
