"""Records a later command reads back are written whole or not at all (a crash or a full disk mid-write)."""

from pathlib import Path

import pytest


def half_then_fail(monkeypatch):
    """Every text write stops halfway with a full disk (written through `Path.write_text` or an open file)."""
    import builtins
    import io

    real_write_text, real_open = Path.write_text, builtins.open

    def write_text(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    class HalfFile(io.TextIOWrapper):
        def write(self, text):
            super().write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")

    def open_(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and "b" not in mode:
            return HalfFile(f.detach())
        return f

    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(builtins, "open", open_)


def test_an_interrupted_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from freeatm_hf.files import write_text_atomic

    path = write_text_atomic(tmp_path / "r.json", '{"a": 1}')
    assert path.read_text() == '{"a": 1}'
    half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_text_atomic(path, '{"a": 1, "b": 2}')
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}' and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    # A record kept private stays so, and a symlinked one is rewritten at its target.
    path.chmod(0o600)
    (tmp_path / "link.json").symlink_to(path)
    write_text_atomic(tmp_path / "link.json", "{}")
    assert (tmp_path / "link.json").is_symlink() and path.read_text() == "{}" and path.stat().st_mode & 0o777 == 0o600


def test_a_checkpoints_results_survive_an_evaluation_that_fails_writing_them(tmp_path, monkeypatch):
    import json

    from freeatm_hf.hub.model_card import RESULTS_FILE, add_results

    (tmp_path / "model.safetensors").write_bytes(b"weights")
    result = {"task": "image-classification", "dataset": "me/shapes", "split": "test", "metric": "top1"}
    add_results(tmp_path, [{**result, "value": 0.5}])
    half_then_fail(monkeypatch)
    with pytest.raises(OSError):
        add_results(tmp_path, [{**result, "metric": "top5", "value": 0.9}])
    monkeypatch.undo()
    assert [r["metric"] for r in json.loads((tmp_path / RESULTS_FILE).read_text())] == ["top1"]


def test_an_export_a_crash_cut_short_counts_as_stale(tmp_path, monkeypatch):
    from freeatm_hf.hub import export
    from freeatm_hf.models import SimCLRConfig, SimCLRModel

    SimCLRModel(SimCLRConfig(backbone="resnet18", proj_hidden_dim=8, proj_dim=4)).save_pretrained(tmp_path)
    assert export.add_stock_exports(tmp_path) == ["torchvision/resnet18.pth"] and export.stale_exports(tmp_path) == []

    # One export failing before it writes anything leaves the others current (a push keeps them).
    real = export.export_checkpoint

    def second_fails(folder, out, to, model=None):
        if to == "vit":
            raise KeyboardInterrupt
        return real(folder, out, to, model=model)

    with monkeypatch.context() as mp:
        mp.setitem(export.STOCK_EXPORTS, "simclr", ("torchvision", "vit"))
        mp.setattr(export, "export_checkpoint", second_fails)
        with pytest.raises(KeyboardInterrupt):
            export.add_stock_exports(tmp_path)
    assert export.stale_exports(tmp_path) == []

    def cut_short(folder, out, to, model=None):  # rewriting the export, killed halfway through the file
        Path(out).write_bytes(Path(out).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "export_checkpoint", cut_short)
    with pytest.raises(KeyboardInterrupt):
        export.add_stock_exports(tmp_path)
    assert export.stale_exports(tmp_path) == ["torchvision/resnet18.pth"]  # a push leaves it out


def test_a_reader_of_the_old_file_sees_it_whole_while_it_is_replaced(tmp_path):
    """The new text goes to another file renamed over the record: a reader that opened the old one (another
    command reading it back) reads the old text whole, never a truncated or mixed file; and the text is kept
    exactly, whitespace and all."""
    from freeatm_hf.files import write_text_atomic

    path = write_text_atomic(tmp_path / "r.json", '{"a": 1}\n')
    with open(path) as reader:
        write_text_atomic(path, '  {"a": 2, "b": [1, 2]}\n\n')
        assert reader.read() == '{"a": 1}\n'
    assert path.read_text() == '  {"a": 2, "b": [1, 2]}\n\n'


def test_two_writers_of_one_record_at_once_each_write_it_whole(tmp_path, monkeypatch):
    """Two commands rewriting the same record at the same moment (another writer's rename lands between this
    one's write and rename): neither fails, and the record is one of the two texts whole."""
    import os

    from freeatm_hf import files

    path = files.write_text_atomic(tmp_path / "r.json", "old")
    real_replace, interrupted = os.replace, []

    def replace(src, dst):
        if not interrupted:
            interrupted.append(src)
            files.write_text_atomic(path, "other writer")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", replace)
    files.write_text_atomic(path, "this writer")
    monkeypatch.undo()
    assert path.read_text() == "this writer" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_finished_generations_card_survives_a_rewrite_cut_short(tmp_path, monkeypatch):
    """Re-running a finished generation rewrites its card: one cut short reads as a card without the `freeatm`
    block, and training would silently take the default mask threshold."""
    import numpy as np
    from PIL import Image

    from freeatm_hf.data.reading import generation_settings
    from freeatm_hf.generate import DatasetWriter
    from freeatm_hf.generate.config import GenerateConfig
    from freeatm_hf.generate.run import write_card
    from freeatm_hf.generate.schema import dataset_features

    cfg = GenerateConfig(output_dir=str(tmp_path), pipeline="tiny", num_images=1, rows_per_shard=1, threshold=0.7)
    writer = DatasetWriter(tmp_path, dataset_features(), cfg.settings(), 1, 1)
    attention = Image.fromarray(np.zeros((4, 4), np.uint8))
    writer.write(writer.shards[0], [{"image": Image.new("RGB", (8, 8)), "prompt": "p", "label": -1, "seed": 0,
                                     "truncated_objects": [], "objects": [{"name": "cat", "token_indices": [1],
                                     "attention": attention, "bbox": None, "area": 0.0, "attention_peak": 0.1}]}])
    write_card(writer, cfg, dataset_features())
    card = (tmp_path / "README.md").read_text()
    half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_card(writer, cfg, dataset_features())
    monkeypatch.undo()
    assert (tmp_path / "README.md").read_text() == card and generation_settings(str(tmp_path))["threshold"] == 0.7


def test_a_checkpoints_card_survives_an_evaluation_cut_short_writing_it(tmp_path, monkeypatch):
    from freeatm_hf.hub.model_card import write_model_card
    from freeatm_hf.models import SimCLRConfig

    config = SimCLRConfig(backbone="resnet18", proj_hidden_dim=8, proj_dim=4)
    write_model_card(tmp_path, config, data={"dataset": "me/scenes"}, training={})
    card = (tmp_path / "README.md").read_text()
    half_then_fail(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        write_model_card(tmp_path, config)  # as `freeatm eval knn` refreshes it
    monkeypatch.undo()
    assert (tmp_path / "README.md").read_text() == card
