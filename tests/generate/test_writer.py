import pytest

from freeatm_hf.generate import DatasetWriter, SettingsMismatchError, dataset_features


def rows(n):
    from PIL import Image

    return [{"image": Image.new("RGB", (4, 4)), "prompt": f"p{i}", "label": -1, "objects": [],
             "truncated_objects": [], "seed": i} for i in range(n)]


def test_shards_cover_every_row_once_and_split_round_robin(tmp_path):
    w = DatasetWriter(tmp_path, dataset_features(), {"a": 1}, num_rows=10, rows_per_shard=3)
    assert [(s.start, s.stop) for s in w.shards] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    ranks = [w.pending(r, 3) for r in range(3)]
    assert [[s.index for s in p] for p in ranks] == [[0, 3], [1], [2]]


def test_more_shards_than_five_digit_names_keep_in_row_order_are_refused_naming_a_shard_size_that_fits(tmp_path):
    # Shard 100000's name sorts before shard 10001's; 10**10 rows listed ten million shards for minutes first.
    fits = DatasetWriter(tmp_path, dataset_features(), {"a": 1}, num_rows=99999 * 4, rows_per_shard=4)
    assert fits.num_shards == 99999
    with pytest.raises(ValueError, match=r"399997 rows in shards of 4 make 100000 shards, more than the 99999 that "
                                         r"shard names number in order: give --rows_per_shard 5 or more"):
        DatasetWriter(tmp_path, dataset_features(), {"a": 1}, num_rows=99999 * 4 + 1, rows_per_shard=4)


def test_a_resume_deals_the_pending_shards_evenly(tmp_path):
    """Rank 0 of 2 finished its share before the crash: the four shards left go two and two, not all to rank 1."""
    w = DatasetWriter(tmp_path, dataset_features(), {"a": 1}, num_rows=8, rows_per_shard=1)
    for i in (0, 2, 4, 6):
        w.write(w.shards[i], rows(1))
    assert [[s.index for s in w.pending(r, 2)] for r in range(2)] == [[1, 5], [3, 7]]


def test_a_written_shard_is_no_longer_pending_and_tmp_files_never_count(tmp_path):
    w = DatasetWriter(tmp_path, dataset_features(), {"a": 1}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[1], rows(2))
    assert [s.index for s in w.pending()] == [0]
    assert w.shard_path(1).name == "train-00001-of-00002.parquet"
    (tmp_path / ".freeatm" / "tmp" / "00000-dead.parquet").write_bytes(b"partial")
    assert [s.index for s in w.pending()] == [0] and not w.is_complete()
    w.clean_tmp()
    assert not list((tmp_path / ".freeatm" / "tmp").iterdir())
    with pytest.raises(ValueError, match="expects 2 rows"):
        w.write(w.shards[0], rows(1))


def test_other_settings_on_an_existing_folder_are_refused(tmp_path):
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "seed": 0}, num_rows=4, rows_per_shard=2)
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "seed": 0}, num_rows=4, rows_per_shard=2)  # resume: fine
    # No shard written yet (a first attempt that died before its first shard): the new settings replace the old.
    DatasetWriter(tmp_path, dataset_features(), {"steps": 50, "seed": 0}, num_rows=4, rows_per_shard=2)
    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "seed": 0}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    with pytest.raises(SettingsMismatchError, match=r"steps: 25 → 50"):
        DatasetWriter(tmp_path, dataset_features(), {"steps": 50, "seed": 0}, num_rows=4, rows_per_shard=2)


def test_a_folder_with_the_users_own_files_is_refused_and_left_as_it_was(tmp_path):
    (tmp_path / "README.md").write_text("my own notes")
    with pytest.raises(SettingsMismatchError, match=r"already holds files \(README.md\) and is not a freeatm"):
        DatasetWriter(tmp_path, dataset_features(), {}, num_rows=1, rows_per_shard=1)
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"] and (tmp_path / "README.md").read_text() == "my own notes"


def test_foreign_parquet_folder_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train-0.parquet").write_bytes(b"x")
    with pytest.raises(SettingsMismatchError, match=r"data has Parquet files but no \.freeatm/settings\.json: not a "
                                                    "freeatm generation"):
        DatasetWriter(tmp_path, dataset_features(), {}, num_rows=1, rows_per_shard=1)


def test_a_folder_from_before_a_setting_existed_resumes_with_its_old_value(tmp_path):
    import json

    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    # Written before `refine` was a setting: those maps were not refined.
    assert json.loads((tmp_path / ".freeatm" / "settings.json").read_text()) == {"steps": 25}
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    with pytest.raises(SettingsMismatchError, match=r"refine: 'none' → 'guided'"):
        DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "guided"}, num_rows=4, rows_per_shard=2)
    # A writer without that setting at all (not the generator's) resumes its own folder as it wrote it.
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25}, num_rows=4, rows_per_shard=2)


def test_scene_prompts_of_other_templates_are_not_resumed_into_one_folder(tmp_path):
    """Prompt i is (seed, i) through the scene templates: a folder begun with the first templates, resumed with the
    second, would hold rows that read otherwise than the first ones, under one set of stated settings."""
    from freeatm_hf.generate.config import GenerateConfig
    from freeatm_hf.prompts.scenes import TEMPLATES_VERSION

    scene = GenerateConfig(output_dir=str(tmp_path / "s"), pipeline="tiny", prompt_mode="scene").settings()
    photo = GenerateConfig(output_dir=str(tmp_path / "p"), pipeline="tiny", prompt_mode="photo").settings()
    assert scene["scene_templates"] == TEMPLATES_VERSION == 4 and "scene_templates" not in photo
    w = DatasetWriter(tmp_path / "old", dataset_features(), {"prompt_mode": "scene"}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))  # written before the version was recorded: the first templates
    with pytest.raises(SettingsMismatchError, match=r"scene_templates: 1 → 2; scene_templates: the version of the "
                                                    r"scene prompts, another freeatm_hf's"):
        DatasetWriter(tmp_path / "old", dataset_features(), {"prompt_mode": "scene", "scene_templates": 2},
                      num_rows=4, rows_per_shard=2)


def test_prompts_of_another_label_space_are_not_resumed_into_one_folder(tmp_path):
    """Scene and photo prompts say each class by its label-space name (and the ClassLabel holds the names): a folder
    begun with the first names (two classes called "crane"), resumed with the second, would hold one class under
    two texts. Shapes captions and prompts files use no label space and record no version."""
    from freeatm_hf.generate.config import GenerateConfig
    from freeatm_hf.prompts.label_space import LABEL_SPACE_VERSION

    def settings(mode):
        return GenerateConfig(output_dir=str(tmp_path / mode), pipeline="tiny", prompt_mode=mode).settings()

    assert settings("scene")["label_space"] == settings("photo")["label_space"] == LABEL_SPACE_VERSION == 3
    assert "label_space" not in settings("shapes")
    w = DatasetWriter(tmp_path / "old", dataset_features(), {"prompt_mode": "photo"}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))  # written before the version was recorded: the first names
    with pytest.raises(SettingsMismatchError, match=r"label_space: 1 → 2; label_space: the version of the ImageNet "
                                                    r"class names, another freeatm_hf's"):
        DatasetWriter(tmp_path / "old", dataset_features(), {"prompt_mode": "photo", "label_space": 2},
                      num_rows=4, rows_per_shard=2)


def test_a_setting_older_versions_recorded_in_every_prompt_mode_is_compared_only_where_it_is_used(tmp_path):
    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "num_objects": 2}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    # Now unset where the prompt mode does not use it (shapes, photo, file): the old folder resumes.
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "num_objects": None}, num_rows=4, rows_per_shard=2)
    with pytest.raises(SettingsMismatchError, match="num_objects: 2 → 3"):
        DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "num_objects": 3}, num_rows=4, rows_per_shard=2)


def test_shards_of_an_older_schema_are_refused_before_any_new_shard_is_written(tmp_path):
    from datasets import Features, List, Value

    old = dataset_features()
    objects = dict(old["objects"].feature)
    del objects["attention_peak"]  # how shards looked before the peak was stored
    old = Features({**old, "objects": List(objects)})
    w = DatasetWriter(tmp_path, old, {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    with pytest.raises(SettingsMismatchError, match=r"\+objects\.attention_peak"):
        DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    # A changed type is named too.
    typed = Features({**old, "seed": Value("int32")})
    with pytest.raises(SettingsMismatchError, match="types differ"):
        DatasetWriter(tmp_path, typed, {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    assert len(list((tmp_path / "data").glob("*.parquet"))) == 1


def test_advice_to_readers_does_not_block_a_resume(tmp_path):
    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none", "min_attention_peak": None}, num_rows=4,
                      rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none", "min_attention_peak": 0.05}, num_rows=4,
                  rows_per_shard=2)


def test_rows_encoded_beside_generation_write_the_shard_pil_rows_would(tmp_path):
    """The generation job encodes each batch as it comes (`encode_images`): the shard must hold the same bytes,
    and read back the same pixels, as one written from the PIL rows."""
    import numpy as np
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from PIL import Image

    from freeatm_hf.generate.schema import encode_images

    def scene():
        rng = np.random.default_rng(0)
        out = rows(3)
        for r in out:
            r["image"] = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
            r["objects"] = [{"name": "cat", "token_indices": [2], "bbox": [1.0, 2.0, 9.0, 12.0], "area": 0.1,
                             "attention_peak": 0.2,
                             "attention": Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L")}]
        return out

    tables = {}
    for name, batch in (("pil", scene()), ("encoded", encode_images(scene()))):
        w = DatasetWriter(tmp_path / name, dataset_features(), {"a": 1}, num_rows=3, rows_per_shard=3)
        w.write(w.shards[0], batch)
        tables[name] = pq.read_table(w.shard_path(0))
    assert isinstance(encode_images(scene())[0]["image"]["bytes"], bytes)
    assert tables["encoded"].equals(tables["pil"])
    back = load_dataset(str(tmp_path / "encoded"), split="train")
    original = scene()
    assert np.array_equal(np.asarray(back[1]["image"]), np.asarray(original[1]["image"]))
    assert np.array_equal(np.asarray(back[2]["objects"][0]["attention"]), np.asarray(original[2]["objects"][0]["attention"]))


def test_settings_older_versions_recorded_but_no_longer_record_do_not_block_a_resume(tmp_path):
    """Batch size and compilation only change speed (an out-of-memory run resumes with a smaller batch); older
    versions recorded them, this one does not: such a folder resumes, whatever value it recorded."""
    import json

    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    settings = tmp_path / ".freeatm" / "settings.json"
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "batch_size": 16, "compile": True}))
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none"}, num_rows=4, rows_per_shard=2)
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "refine": "none", "batch_size": 4}, num_rows=4,
                  rows_per_shard=2)


def test_settings_given_as_tuples_resume_as_the_lists_json_records(tmp_path):
    import json

    settings = {"steps": 25, "step_window": (0.0, 1.0), "capture": {"down_factors": (2, 4)}}
    w = DatasetWriter(tmp_path, dataset_features(), settings, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    assert json.loads((tmp_path / ".freeatm" / "settings.json").read_text())["step_window"] == [0.0, 1.0]
    DatasetWriter(tmp_path, dataset_features(), settings, num_rows=4, rows_per_shard=2)  # the same run resumes


def test_shards_of_another_shard_layout_are_refused_not_written_beside(tmp_path):
    """A folder from before its shard size was recorded (the perfect scenes') resumed with another one: shards of
    other names were all pending and joined the old in data/ (rows read twice); shards of the same names but other
    ranges were skipped (rows lost)."""
    import json

    settings = tmp_path / ".freeatm" / "settings.json"
    w = DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "rows_per_shard": 2}, num_rows=4, rows_per_shard=2)
    w.write(w.shards[0], rows(2))
    settings.write_text(json.dumps({"steps": 25}))  # as recorded before rows_per_shard was
    for size in (1, 3):  # four shards of other names; two of the same names, rows 0-2 and 3
        with pytest.raises(SettingsMismatchError, match=rf"train-00000-of-00002\.parquet is no shard of this layout "
                                                        rf"\(4 rows in shards of {size}\)"):
            DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "rows_per_shard": size}, num_rows=4,
                          rows_per_shard=size)
    DatasetWriter(tmp_path, dataset_features(), {"steps": 25, "rows_per_shard": 2}, num_rows=4, rows_per_shard=2)
