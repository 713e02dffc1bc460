"""The one GPU call (bench/run_gpu.sh) names scripts and flags that exist: a renamed flag fails here, not after
a device has been booked."""

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
