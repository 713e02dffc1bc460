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
