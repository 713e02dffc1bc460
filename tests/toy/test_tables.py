import pytest

from freeatm_hf.toy.tables import cell, summarize


def test_rows_report_the_mean_and_sample_spread_over_seeds():
    row = summarize("x", [{"map": 0.5, "acc": 0.2}, {"map": 0.7, "acc": 0.2}], ["map", "acc"])
    assert row["map"] == pytest.approx(0.6) and row["map_std"] == pytest.approx(0.1414, abs=1e-4)  # n − 1
    assert cell(row, "map", scale=100) == "60.0 ± 14.1" and cell(row, "acc", scale=100) == "20.0 ± 0.0"
    assert row["seeds"] == 2 and len(row["runs"]) == 2
    one = summarize("y", [{"map": 0.5}], ["map"])
    assert one["map_std"] is None and cell(one, "map", scale=100) == "50.0"


def test_a_finished_part_is_reused_only_under_its_own_recipe(tmp_path, caplog):
    from freeatm_hf.toy.tables import keep_recipe, reusable

    record = tmp_path / "run" / "recipe.json"
    recipe = {"pretraining": ["--max_steps", "2"], "scenes": {"seed": 0}}
    assert not reusable(record, recipe, done=False)  # nothing finished: (re)do it
    assert reusable(record, recipe, done=True) and "no recipe recorded" in caplog.text  # finished before recipes
    keep_recipe(record, recipe)
    assert reusable(record, recipe, done=True)
    assert not reusable(record, recipe, done=False)  # recorded, but its model or scores are gone
    with pytest.raises(ValueError, match=r"records other settings \(pretraining: \['--max_steps', '2'\] → "
                                         r"\['--max_steps', '3'\]\)"):
        reusable(record, {**recipe, "pretraining": ["--max_steps", "3"]}, done=True)


def test_pretraining_runs_once_per_recipe_and_on_the_cpu_when_asked(tmp_path):
    from freeatm_hf.toy.tables import RECIPE_FILE, pretrain_once

    calls = []

    def train(argv):
        calls.append(argv)
        (tmp_path / "run").mkdir(exist_ok=True)
        (tmp_path / "run" / "model.safetensors").write_bytes(b"x")

    recipe = {"pretraining": ["--max_steps", "2"], "scenes": {"seed": 0}}
    pretrain_once(train, "simclr", tmp_path / "scenes", tmp_path / "run", recipe, cpu=True)
    assert calls == [["simclr", "--dataset", str(tmp_path / "scenes"), "--output_dir", str(tmp_path / "run"),
                      "--max_steps", "2", "--use_cpu", "true"]]
    assert (tmp_path / "run" / RECIPE_FILE).is_file()
    pretrain_once(train, "simclr", tmp_path / "scenes", tmp_path / "run", recipe, cpu=True)
    assert len(calls) == 1  # the model made by this recipe is there
    (tmp_path / "run" / "model.safetensors").unlink()
    pretrain_once(train, "simclr", tmp_path / "scenes", tmp_path / "run", recipe, cpu=False)
    assert len(calls) == 2 and "--use_cpu" not in calls[-1]


def test_scenes_without_a_cut_have_no_filter_to_ablate(tmp_path):
    import json

    from freeatm_hf.toy.dataset import write_perfect_scenes
    from freeatm_hf.toy.tables import ablation_cut, scenes_settings

    scenes = write_perfect_scenes(tmp_path / "perfect", 2)
    assert ablation_cut(scenes, ablate=False) is None
    with pytest.raises(ValueError, match="records no min_attention_peak"):
        ablation_cut(scenes, ablate=True)
    settings = json.loads((tmp_path / "perfect" / ".freeatm" / "settings.json").read_text())
    assert scenes_settings(scenes) == {**settings, "min_attention_peak": None}
