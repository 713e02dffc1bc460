"""recipes/shapes_end_to_end.sh runs from a clean folder: generate → pretrain → evaluate → cards → push →
the Space opens the published dataset."""

import json
import subprocess
from pathlib import Path

from huggingface_hub import ModelCard

ROOT = Path(__file__).resolve().parents[1]


def test_walkthrough_script(tmp_path):
    out = tmp_path / "e2e"
    res = subprocess.run(["bash", str(ROOT / "recipes" / "shapes_end_to_end.sh"), str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "Space: row 0 of" in res.stdout and "Traceback" not in res.stderr
    # The Space read the dataset as downloaded back from the loopback Hub (snapshot_download via HF_ENDPOINT).
    assert "hub_cache/datasets--me--shapes-scenes/snapshots/" in res.stdout
    hub = out / "hub"
    assert (hub / "datasets" / "me" / "shapes-scenes" / "README.md").is_file()
    assert sorted(p.name for p in (hub / "datasets" / "me" / "shapes-scenes" / "data").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for name in ("simclr-atm", "mae-atm"):
        card = (hub / "models" / "me" / name / "README.md").read_text()
        assert "model-index" in card and "knn20_top1" in card and "linear_probe_top1" in card
        # Trained before the dataset was pushed, published after: the card names the data by its Hub id.
        meta = ModelCard(card)
        assert meta.data.datasets == ["me/shapes-scenes"] and "dataset: `me/shapes-scenes`" in meta.text
        assert "built-in `shapes` pipeline" in meta.text
        # The facts behind the card name the data by Hub id too, not by this machine's paths.
        facts = json.loads((hub / "models" / "me" / name / "card_info.json").read_text())
        assert facts["data"]["dataset"] == "me/shapes-scenes"
        assert str(out) not in (hub / "models" / "me" / name / "eval_results.json").read_text()
        assert (hub / "models" / "me" / name / "model.safetensors").is_file()
    assert "hf_local_walkthrough" not in res.stdout + res.stderr
    assert (out / ".freeatm-walkthrough").is_file()  # what lets a rerun start afresh over it


def test_the_walkthrough_refuses_a_folder_it_did_not_make(tmp_path):
    """`rm -rf` of a wrong argument (a parent folder, a trained model's) would wipe a user's work."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "a_file").write_text("notes")
    for target in (tmp_path / "mine", tmp_path / "a_file"):
        res = subprocess.run(["bash", str(ROOT / "recipes" / "shapes_end_to_end.sh"), str(target)], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2 and "no walkthrough made it" in res.stderr
    assert (tmp_path / "mine" / "model.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "a_file").read_text() == "notes"
