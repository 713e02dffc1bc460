import json
import subprocess
import sys
from pathlib import Path

import pytest

from freeatm_hf import cli
from freeatm_hf.generate import SettingsMismatchError
from freeatm_hf.generate.cli import parse


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["push", "--help"]])
def test_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    assert "freeatm" in capsys.readouterr().out


def test_python_dash_m_takes_the_same_arguments():
    res = subprocess.run([sys.executable, "-m", "freeatm_hf.generate", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--num_inference_steps" in res.stdout and "--down_factors" in res.stdout


def test_yaml_recipe_with_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: out\nnum_images: 12\ndown_factors: [4]\ninclude_mid: true\nstep_window: [0.2, 0.8]\n")
    cfg = parse([str(recipe), "--num_images", "3"])
    assert (cfg.output_dir, cfg.num_images, cfg.down_factors, cfg.include_mid, cfg.step_window) == (
        "out", 3, [4], True, [0.2, 0.8])


def test_generate_then_resume_then_refuse_other_settings(tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["generate", "--output_dir", str(out), "--num_images", "3", "--batch_size", "2", "--rows_per_shard", "2",
            "--num_inference_steps", "2", "--device", "cpu"]
    cli.main(args)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    partial = out / ".freeatm" / "tmp" / "00001-crashed.parquet"  # a shard a crash left half written
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"partial")
    cli.main(args)  # everything done: nothing is regenerated, and the crash's leftover is cleared
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == first
    assert not partial.exists()
    with pytest.raises(SettingsMismatchError, match="num_inference_steps: 2 → 3"):
        cli.main(args[:-4] + ["--num_inference_steps", "3", "--device", "cpu"])


def _crash_on_second_shard(monkeypatch):
    from freeatm_hf.generate import writer as W

    write = W.DatasetWriter.write

    def crash(self, shard, rows):
        if shard.index == 1:
            raise RuntimeError("simulated crash")
        return write(self, shard, rows)

    monkeypatch.setattr(W.DatasetWriter, "write", crash)
    return lambda: monkeypatch.setattr(W.DatasetWriter, "write", write)


BASE = ["--pipeline", "tiny", "--device", "cpu", "--num_inference_steps", "1", "--num_images", "4",
        "--rows_per_shard", "2", "--batch_size", "2"]


def test_an_edited_prompts_file_does_not_resume_into_the_same_rows(tmp_path, monkeypatch):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "a dog with a ball", "nouns": ["dog", "ball"]}\n')
    args = ["generate", "--output_dir", str(tmp_path / "ds"), "--prompts_file", str(prompts), *BASE]
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    prompts.write_text('{"text": "a cat on a sofa", "nouns": ["cat", "sofa"]}\n')
    with pytest.raises(SettingsMismatchError, match="prompts_sha256"):
        cli.main(args)


def test_a_resume_must_use_the_pipeline_commit_that_made_the_rows(tmp_path, monkeypatch):
    from freeatm_hf.generate import run

    args = ["generate", "--output_dir", str(tmp_path / "ds"), *BASE]
    monkeypatch.setattr(run, "resolved_commit", lambda spec, revision=None: "aaaa1111")
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    monkeypatch.setattr(run, "resolved_commit", lambda spec, revision=None: "bbbb2222")  # the branch moved on
    with pytest.raises(SettingsMismatchError, match="--revision aaaa1111"):
        cli.main(args)
    monkeypatch.setattr(run, "resolved_commit", lambda spec, revision=None: "aaaa1111")
    cli.main(args)  # the same commit finishes the folder
    assert len(list((tmp_path / "ds" / "data").iterdir())) == 2


def test_the_advised_revision_resumes_a_folder_whose_branch_moved_on(tmp_path, monkeypatch):
    """The refusal advises `--revision <the commit that made the rows>`: the revision recorded (none: the branch)
    was compared as written, and refused the advice as another setting."""
    from freeatm_hf.generate import run

    args = ["generate", "--output_dir", str(tmp_path / "ds"), *BASE]
    load = run.load_pipeline
    monkeypatch.setattr(run, "load_pipeline", lambda *a, revision=None, **k: load(*a, **k))  # a built-in has none
    monkeypatch.setattr(run, "resolved_commit", lambda spec, revision=None: revision or "aaaa1111")
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    monkeypatch.setattr(run, "resolved_commit", lambda spec, revision=None: revision or "bbbb2222")  # moved on
    with pytest.raises(SettingsMismatchError, match="--revision aaaa1111"):
        cli.main(args)
    with pytest.raises(SettingsMismatchError, match="revision: None → 'cccc3333'"):
        cli.main(args + ["--revision", "cccc3333"])  # any other revision is still another setting
    cli.main(args + ["--revision", "aaaa1111"])
    assert len(list((tmp_path / "ds" / "data").iterdir())) == 2
    from huggingface_hub import DatasetCard

    generation = DatasetCard.load(tmp_path / "ds" / "README.md").data.freeatm["generation"]
    assert generation["revision"] == generation["pipeline_commit"] == "aaaa1111"


def test_a_resume_must_use_the_local_folder_weights_that_made_the_rows(tmp_path, monkeypatch):
    from freeatm_hf.generate import run
    from freeatm_hf.generate.tiny import tiny_pipeline

    folder = tmp_path / "model"
    tiny_pipeline(seed=0).save_pretrained(folder)
    args = ["generate", "--output_dir", str(tmp_path / "ds"), *BASE[2:], "--pipeline", str(folder)]
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    (folder / "README.md").write_text("a card edited in between changes no row")
    unet = folder / "unet" / "diffusion_pytorch_model.safetensors"
    kept = unet.read_bytes()
    tiny_pipeline(seed=1).unet.save_pretrained(folder / "unet")  # retrained in between
    loads = []
    load = run.load_pipeline
    monkeypatch.setattr(run, "load_pipeline", lambda *a, **k: loads.append(a) or load(*a, **k))
    with pytest.raises(SettingsMismatchError, match="other weights or component settings of this pipeline folder"):
        cli.main(args)
    assert loads == []  # refused before the weights are loaded (minutes for a large model)
    unet.write_bytes(kept)
    cli.main(args)  # the same weights finish the folder
    assert len(list((tmp_path / "ds" / "data").iterdir())) == 2
    assert "pipeline_fingerprint" not in (tmp_path / "ds" / "README.md").read_text()


def test_a_resume_must_use_the_capture_the_folder_recommended(tmp_path, monkeypatch):
    """The recommended map size is no field of its own: the resolved capture is a setting."""
    import json

    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.pipelines import save_recommendation
    from freeatm_hf.generate.tiny import tiny_pipeline

    folder = tmp_path / "model"
    tiny_pipeline().save_pretrained(folder)
    save_recommendation(folder, CaptureConfig(down_factors=(2,), map_size=(16, 16)), threshold=0.5)
    args = ["generate", "--output_dir", str(tmp_path / "ds"), *BASE[2:], "--pipeline", str(folder)]
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    save_recommendation(folder, CaptureConfig(down_factors=(2,), map_size=(8, 8)), threshold=0.5)
    with pytest.raises(SettingsMismatchError, match="capture: .*'map_size': \\[16, 16\\].* → .*'map_size': \\[8, 8\\]"):
        cli.main(args)
    # Settings written before the capture was recorded resume as they did.
    settings = tmp_path / "ds" / ".freeatm" / "settings.json"
    old = json.loads(settings.read_text())
    del old["capture"]
    settings.write_text(json.dumps(old))
    cli.main(args)


def test_the_cards_map_size_comes_from_a_row_that_has_maps(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "a plain field", "nouns": []}\n{"text": "a dog with a ball", "nouns": ["dog", "ball"]}\n')
    out = tmp_path / "ds"
    cli.main(["generate", "--output_dir", str(out), "--prompts_file", str(prompts), "--pipeline", "tiny",
              "--device", "cpu", "--num_inference_steps", "1", "--num_images", "2", "--map_size", "8", "8"])
    assert "at 8×8" in (out / "README.md").read_text()


def test_auto_dtype_is_compared_as_what_it_resolved_to_and_zero_steps_are_refused(tmp_path, monkeypatch):
    import torch

    from freeatm_hf.generate.config import GenerateConfig

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # --device cuda is refused on a machine without one
    cpu, gpu = (GenerateConfig(output_dir=str(tmp_path), pipeline="tiny", device=d).settings() for d in ("cpu", "cuda"))
    assert cpu["resolved_dtype"] == "float32" and gpu["resolved_dtype"] == "float16" and cpu != gpu
    with pytest.raises(ValueError, match="num_inference_steps must be at least 1"):
        GenerateConfig(output_dir=str(tmp_path), pipeline="tiny", num_inference_steps=0)


def test_the_card_licence_is_the_users_and_changing_it_keeps_the_rows(tmp_path):
    from huggingface_hub import DatasetCard

    out = tmp_path / "ds"
    args = ["generate", "--output_dir", str(out), "--pipeline", "tiny", "--num_images", "1", "--num_inference_steps",
            "1", "--device", "cpu"]
    cli.main(args)
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other" and "their licence is the generator's" in card.text
    rows = {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()}
    cli.main(args + ["--license", "cc-by-4.0"])  # not a setting of the rows: no mismatch, nothing regenerated
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "cc-by-4.0" and "their licence is the generator's" not in card.text
    assert {p.name: p.stat().st_mtime_ns for p in (out / "data").iterdir()} == rows


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="prompt_mode"):
        parse(["--output_dir", "x", "--prompt_mode", "poems"])
    with pytest.raises(ValueError, match="prompts_file"):
        parse(["--output_dir", "x", "--prompt_mode", "file"])
    for bad in ("abc", "1.5"):
        with pytest.raises(ValueError, match=rf"--threshold must be a number in \[0, 1\) or 'otsu', got '{bad}'"):
            parse(["--output_dir", "x", "--pipeline", "tiny", "--threshold", bad])
    with pytest.raises(ValueError, match="--num_objects must be 1, 2 or 3, got 0"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--num_objects", "0"])
    with pytest.raises(ValueError, match=r"--license must be a Hub licence id .*\(did you mean 'apache-2.0'\?\)"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--license", "Apache-2.0"])
    with pytest.raises(ValueError, match="--license must be a Hub licence id"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--license", "my licence"])
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--license", "creativeml-openrail-m"]).license == \
        "creativeml-openrail-m"
    # NaN passes every pipeline's `guidance_scale > 1` test as false: guidance silently off, `nan` in the card.
    for bad in ("nan", "inf", "-1"):
        with pytest.raises(ValueError, match=rf"--guidance_scale must be a finite number >= 0, got {float(bad)}"):
            parse(["--output_dir", "x", "--pipeline", "tiny", "--guidance_scale", bad])
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--guidance_scale", "0"]).guidance_scale == 0.0
    # Refused by the writer before, once an augmenter had loaded and the output folder was made.
    for bad in ("0", "-4"):
        with pytest.raises(ValueError, match=rf"--num_images and --rows_per_shard must be positive, got 64 and {bad}"):
            parse(["--output_dir", "x", "--pipeline", "tiny", "--rows_per_shard", bad])
    with pytest.raises(ValueError, match="make 100000 shards, more than the 99999"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--num_images", "100000", "--rows_per_shard", "1"])


def test_a_prompts_file_is_used_when_given_and_its_mistakes_are_named_by_line(tmp_path):
    from freeatm_hf.generate.run import PromptSource

    good = tmp_path / "p.JSONL"  # any case of the extension
    good.write_text('{"text": "a dog with a ball", "nouns": ["dog", "ball"]}\n\n{"text": "a cat"}\n')
    cfg = parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(good)])
    assert cfg.prompt_mode == "file"  # auto: a file given is the prompts to use
    source = PromptSource(cfg)
    assert (source[0].text, source[0].nouns, source[1].nouns) == ("a dog with a ball", ["dog", "ball"], [])
    with pytest.raises(ValueError, match="--prompts_file is read with --prompt_mode file"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(good), "--prompt_mode", "scene"])
    for body, message in [('{"text": "a dog", "nouns": ["dog"]}\n{"text": "a cat",\n', r"p.jsonl:2: Expecting"),
                          ('{"prompt": "a dog"}\n', r"p.jsonl:1: a prompt needs a 'text' string, got keys \['prompt'\]"),
                          ('{"text": "a dog", "nouns": "dog"}\n', r"p.jsonl:1: 'nouns' must be a list of strings"),
                          ('{"text": "a dog", "nouns": ["cat"]}\n', r"p.jsonl:1: noun 'cat' .* not found")]:
        bad = tmp_path / "p.jsonl"
        bad.write_text(body)
        with pytest.raises(ValueError, match=message):
            PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(bad)]))


def test_a_prompts_file_naming_objects_the_shapes_model_never_learned_is_warned_about(tmp_path, caplog):
    from freeatm_hf.generate.run import PromptSource

    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"text": "a dog on a lawn", "nouns": ["dog", "lawn"]}\n'
                       '{"text": "a red circle on a plain background", "nouns": ["red circle"]}\n')
    PromptSource(parse(["--output_dir", "x", "--prompts_file", str(prompts)]))  # the shapes model by default
    assert "names 2 it has never seen ('dog', 'lawn')" in caplog.text
    caplog.clear()
    PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(prompts)]))  # open vocabulary
    prompts.write_text('{"text": "a red circle and a small blue star", "nouns": ["red circle", "blue star"]}\n')
    PromptSource(parse(["--output_dir", "x", "--prompts_file", str(prompts)]))
    assert "never seen" not in caplog.text
    # Its tokenizer lowercases: a capitalised name is one it knows.
    prompts.write_text('{"text": "A Red Circle and a small blue star", "nouns": ["Red Circle", "blue star"]}\n')
    PromptSource(parse(["--output_dir", "x", "--prompts_file", str(prompts)]))
    assert "never seen" not in caplog.text


def test_num_objects_is_a_setting_of_scene_prompts_only(caplog):
    assert parse(["--output_dir", "x", "--pipeline", "tiny"]).settings()["num_objects"] == 2
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--num_objects", "3"]).num_objects == 3
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--prompt_mode", "shapes"]).settings()["num_objects"] is None
    # A scene recipe (num_objects: 2) run with another prompt mode: the recipe's value is dropped, with a word.
    recipe = str(Path(__file__).parents[2] / "recipes" / "generate_sd15.yaml")
    cfg = parse([recipe, "--pipeline", "tiny", "--prompt_mode", "photo"])
    assert cfg.num_objects is None and cfg.settings()["num_objects"] is None
    assert "--num_objects 2 is for scene prompts; photo prompts set their own" in caplog.text
    from freeatm_hf.generate.run import PromptSource

    photo = PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompt_mode", "photo"]))[0]
    assert photo.text.startswith("a photo of") and len(photo.objects) == 1
    scene = PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--num_objects", "3"]))[0]
    assert len(scene.objects) == 3


def test_default_pipeline_is_resolved_before_it_is_recorded(monkeypatch):
    import freeatm_hf.toy.model as toy_model

    monkeypatch.setattr(toy_model, "trained_pipeline_available", lambda: False)
    cfg = parse(["--output_dir", "x"])
    got = (cfg.pipeline, cfg.prompt_mode, cfg.down_factors, cfg.threshold, cfg.guidance_scale)
    assert got == ("tiny", "scene", [2, 4], "0.4", 7.5)
    monkeypatch.setattr(toy_model, "trained_pipeline_available", lambda: True)
    assert parse(["--output_dir", "x"]).pipeline == "shapes"
    assert parse(["--output_dir", "x", "--pipeline", "tiny"]).pipeline == "tiny"


def test_settings_a_model_folder_recommends_fill_only_what_is_not_given(tmp_path, caplog):
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.pipelines import save_recommendation

    save_recommendation(tmp_path, CaptureConfig(down_factors=(1, 2), step_window=(0.5, 1.0)), threshold=0.55,
                        prompt_mode="shapes", guidance_scale=4.0)
    cfg = parse(["--output_dir", "x", "--pipeline", str(tmp_path)])
    assert cfg.guidance_scale == 4.0
    assert parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--guidance_scale", "2"]).guidance_scale == 2.0
    got = (cfg.down_factors, cfg.step_window, cfg.threshold, cfg.prompt_mode)
    assert got == ([1, 2], [0.5, 1.0], "0.55", "shapes")
    cfg = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--down_factors", "2", "--threshold", "otsu",
                 "--prompt_mode", "photo"])
    assert (cfg.down_factors, cfg.step_window, cfg.threshold, cfg.prompt_mode) == ([2], [0.5, 1.0], "otsu", "photo")
    assert "was trained for shapes prompts (its freeatm.json); photo prompts may name words" in caplog.text
    (tmp_path / "freeatm.json").write_text("{not json")
    with pytest.raises(ValueError, match="freeatm.json"):
        parse(["--output_dir", "x", "--pipeline", str(tmp_path)])


def test_the_whole_recommended_capture_and_its_zeros_come_from_the_model_folder(tmp_path):
    """The command line takes what FreeATMGenerator(pipe) takes: the mid block, layer weights and MM-DiT blocks
    too, and a recommended 0 (guidance 0.0 for a distilled model) is a value, not a missing one."""
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.pipelines import save_recommendation

    capture = CaptureConfig(down_factors=(2, 8), include_mid=True, layer_weights={"up_blocks": 2.0}, mmdit_blocks="all")
    save_recommendation(tmp_path, capture, threshold=0.0, guidance_scale=0.0, min_attention_peak=0.05)
    cfg = parse(["--output_dir", "x", "--pipeline", str(tmp_path)])
    assert cfg.capture_config().to_dict() == capture.to_dict()
    assert (cfg.guidance_scale, cfg.threshold, cfg.min_attention_peak) == (0.0, "0.0", 0.05)
    assert parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--guidance_scale", "5"]).min_attention_peak is None
    other = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--down_factors", "2"]).capture_config()
    assert (other.include_mid, other.layer_weights, other.mmdit_blocks) == (False, None, "all")
    # A recommendation that leaves the resolutions to the default still brings its mid block and layer weights.
    (tmp_path / "freeatm.json").write_text('{"capture": {"include_mid": true, "layer_weights": {"up_blocks": 2.0}}}')
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path)]).capture_config()
    assert (c.down_factors, c.include_mid, c.layer_weights) == ((2, 4), True, {"up_blocks": 2.0})
    # A bare flag is still true, and false can be said.
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--include_mid"]).include_mid is True
    assert parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--include_mid", "false"]).include_mid is False


def test_a_folder_that_recorded_another_spelling_still_resumes(tmp_path, monkeypatch):
    """Older versions recorded --threshold and --torch_dtype as typed (".4", "fp32")."""
    import json

    args = ["generate", "--output_dir", str(tmp_path / "ds"), *BASE, "--threshold", "0.4", "--torch_dtype", "float32"]
    restore = _crash_on_second_shard(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cli.main(args)
    restore()
    settings = tmp_path / "ds" / ".freeatm" / "settings.json"
    recorded = json.loads(settings.read_text())
    assert (recorded["threshold"], recorded["torch_dtype"]) == ("0.4", "float32")
    settings.write_text(json.dumps({**recorded, "threshold": ".4", "torch_dtype": "fp32"}))
    cli.main(args)
    assert len(list((tmp_path / "ds" / "data").iterdir())) == 2


def test_one_spelling_of_threshold_and_dtype_and_bad_capture_refused_before_loading(tmp_path):
    base = ["--output_dir", str(tmp_path), "--pipeline", "tiny"]
    assert parse(base + ["--threshold", ".4"]).settings() == parse(base + ["--threshold", "0.40"]).settings()
    assert parse(base + ["--torch_dtype", "fp16"]).settings() == parse(base + ["--torch_dtype", "float16"]).settings()
    for bad, why in [(["--step_window", "0.8", "0.2"], "step_window must satisfy"),
                     (["--step_window", "0"], r"step_window is two fractions, start and end, got \(0.0,\)"),
                     (["--down_factors", "3"], "down_factors must be powers of two"),
                     (["--mmdit_blocks", "dual"], "mmdit_blocks must be double, single or all"),
                     (["--height", "-64"], "height and width must be positive"),
                     (["--height", "0"], "height and width must be positive"),
                     (["--width", "0"], "height and width must be positive"),
                     (["--map_size", "8", "0"], r"map_size must be a height and a width, got \[8, 0\]"),
                     (["--num_images", "0"], "num_images and batch_size must be positive"),
                     (["--batch_size", "0"], "num_images and batch_size must be positive"),
                     (["--torch_dtype", "half"], "torch_dtype must be auto, float16")]:
        with pytest.raises(ValueError, match=why):
            parse(base + bad)


def test_the_recommended_attention_peak_cut_is_recorded_only_with_the_capture_it_was_measured_with(tmp_path, caplog):
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.pipelines import save_recommendation

    save_recommendation(tmp_path, CaptureConfig(down_factors=(1,), step_window=(0.5, 1.0)), threshold=0.7,
                        guidance_scale=2.0, min_attention_peak=0.05)
    base = ["--output_dir", "x", "--pipeline", str(tmp_path)]
    assert parse(base).min_attention_peak == 0.05
    assert parse(base + ["--threshold", "0.3", "--refine", "guided"]).min_attention_peak == 0.05  # after the peak
    assert parse(base + ["--min_attention_peak", "0.1"]).min_attention_peak == 0.1
    # The peak is a raw probability: other layers, steps or guidance move its scale, so the cut does not carry.
    for other in (["--down_factors", "1", "2"], ["--step_window", "0", "1"], ["--guidance_scale", "6"],
                  ["--layer_weights", '{"up_blocks": 2}']):
        with caplog.at_level("WARNING"):
            assert parse(base + other).min_attention_peak is None, other
        assert "no cut recorded" in caplog.text


def test_the_capture_carries_the_recommended_weights_only_with_the_recommended_resolutions(tmp_path):
    from freeatm_hf.attention import CaptureConfig
    from freeatm_hf.generate.pipelines import save_recommendation

    save_recommendation(tmp_path, CaptureConfig(down_factors=(1, 2), factor_weights={1: 0.75, 2: 0.25},
                                                map_size=(12, 12)), threshold=0.5)
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path)]).capture_config()
    assert (c.down_factors, c.factor_weights, c.map_size) == ((1, 2), {1: 0.75, 2: 0.25}, (12, 12))
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--down_factors", "2", "--include_mid", "true",
               "--mmdit_blocks", "all"]).capture_config()
    assert (c.down_factors, c.factor_weights, c.map_size, c.include_mid, c.mmdit_blocks) == (
        (2,), None, None, True, "all")
    # Given on the command line, weights and map size win over the folder's.
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--factor_weights", "1", "3", "--map_size", "8",
               "16"]).capture_config()
    assert (c.down_factors, c.factor_weights, c.map_size) == ((1, 2), {1: 1.0, 2: 3.0}, (8, 16))
    with pytest.raises(ValueError, match=r"one weight per down factor \[1, 2\]"):
        parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--factor_weights", "1"])
    with pytest.raises(ValueError, match="map_size must be a height and a width"):
        parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--map_size", "8"])
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--layer_weights",
               '{"up_blocks.1": 2, "down_blocks": 0}']).capture_config()
    assert c.layer_weights == {"up_blocks.1": 2.0, "down_blocks": 0.0} and c.layer_weight("up_blocks.1.x") == 2.0
    with pytest.raises(ValueError, match="layer_weights must be a JSON object"):
        parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--layer_weights", "up_blocks=2"])


def test_a_hub_models_recommendation_is_downloaded(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from freeatm_hf.generate import pipelines

    asked = []
    rec = tmp_path / "freeatm.json"
    rec.write_text('{"threshold": 0.6, "prompt_mode": "shapes", "capture": {"down_factors": [1]}}')

    def fake_download(repo_id, filename, revision=None, **kw):
        asked.append((repo_id, filename, revision))
        if repo_id == "me/shapes-t2i":
            return str(rec)
        raise EntryNotFoundError(f"{filename} not in {repo_id}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cfg = parse(["--output_dir", "x", "--pipeline", "me/shapes-t2i"])
    assert (cfg.threshold, cfg.prompt_mode, cfg.down_factors) == ("0.6", "shapes", [1])
    assert ("me/shapes-t2i", "freeatm.json", None) in asked
    # A pinned revision reads the settings saved with those weights, not main's.
    parse(["--output_dir", "x", "--pipeline", "me/shapes-t2i", "--revision", "v2"])
    assert asked[-1] == ("me/shapes-t2i", "freeatm.json", "v2")
    # A repo without one (or the Hub out of reach) leaves the plain defaults.
    assert pipelines.pipeline_recommendation("me/plain-sd") is None
    cfg = parse(["--output_dir", "x", "--pipeline", "me/plain-sd"])
    assert (cfg.threshold, cfg.prompt_mode, cfg.down_factors) == ("0.4", "scene", [2, 4])


def test_generated_prompt_modes_do_not_cycle_after_the_label_space():
    from freeatm_hf.generate import GenerateConfig
    from freeatm_hf.generate.run import PromptSource

    source = PromptSource(GenerateConfig(output_dir="x", pipeline="tiny", prompt_mode="scene"))
    n = len(source.items)  # one main class per ImageNet class...
    assert n == 1000
    # ...but index n + 5 is a new draw (same main class), not a repeat of index 5.
    assert source[n + 5].text != source[5].text
    assert source[n + 5].label == source[5].label


@pytest.mark.parametrize("pipeline, denoiser", [("tiny", "UNet2DConditionModel"), ("tiny-flux", "FluxTransformer2DModel"),
                                                ("tiny-sd3", "SD3Transformer2DModel")])
def test_compile_wraps_the_denoiser_of_either_family(tmp_path, monkeypatch, pipeline, denoiser):
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(type(m).__name__) or m)
    cli.main(["generate", "--output_dir", str(tmp_path / "ds"), "--pipeline", pipeline, "--num_images", "1",
              "--num_inference_steps", "1", "--compile", "true", "--device", "cpu", "--height", "64", "--width", "64"])
    assert compiled == [denoiser]


def test_an_mmdit_card_records_the_resolution_captured_and_the_t5_token_positions(tmp_path):
    """Asked for the UNet default (2, 4), an MM-DiT pipeline captures its one patch grid: the card says (2,)."""
    from huggingface_hub import DatasetCard

    out = tmp_path / "ds"
    cli.main(["generate", "--output_dir", str(out), "--pipeline", "tiny-flux", "--num_images", "1",
              "--num_inference_steps", "1", "--device", "cpu", "--height", "64", "--width", "64"])
    card = DatasetCard.load(out / "README.md")
    generation = card.data.freeatm["generation"]
    assert generation["denoiser"] == "mmdit" and generation["down_factors"] == [2]
    assert "| down_factors | `[2]` |" in card.text
    assert "for Flux the prompt as T5 tokenizes it (0 = first word)" in card.text


def test_a_hub_pipeline_loads_from_the_cache_at_a_revision_and_the_card_names_its_commit(tmp_path):
    """`--pipeline user/model --revision main`, offline, from a Hub cache laid out as huggingface_hub writes it:
    the card records the commit the revision resolved to and the scheduler that ran."""
    import json
    import os
    import shutil

    from huggingface_hub import DatasetCard

    from freeatm_hf.toy.model import MODEL_DIR

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--shapes"
    shutil.copytree(MODEL_DIR, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    out = tmp_path / "ds"
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "freeatm_hf.cli", "generate", "--pipeline", "me/shapes",
                          "--revision", "main", "--output_dir", str(out), "--num_images", "2", "--batch_size", "2",
                          "--num_inference_steps", "2", "--device", "cpu"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    generation = DatasetCard.load(out / "README.md").data.freeatm["generation"]
    scheduler = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())["_class_name"]
    assert generation["pipeline"] == "me/shapes" and generation["revision"] == "main"
    assert generation["pipeline_commit"] == commit and generation["scheduler_class"] == scheduler
    assert generation["prompt_mode"] == "shapes"  # the cached folder's freeatm.json was read too


def test_a_revision_for_a_built_in_pipeline_is_refused(tmp_path):
    import torch

    from freeatm_hf.generate.pipelines import load_pipeline

    with pytest.raises(ValueError, match="--revision 'v2' is for a Hub pipeline id; 'tiny' is built in"):
        load_pipeline("tiny", torch.device("cpu"), revision="v2")


def test_a_pipeline_that_cannot_be_loaded_offline_says_what_works_offline(tmp_path, monkeypatch):
    import torch

    from freeatm_hf.generate.pipelines import load_pipeline

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"could not load the pipeline 'me/not-cached' .*offline, "
                                                r"`--pipeline shapes` is the model shipped"):
        load_pipeline("me/not-cached", torch.device("cpu"))
    # A path is no Hub id: it was called a malformed one, with advice on the Hub cache.
    with pytest.raises(FileNotFoundError, match=r"^--pipeline /no/such/model: no such folder$"):
        load_pipeline("/no/such/model", torch.device("cpu"))


def test_generation_asks_the_augmenter_for_a_batchs_prompts_together(tmp_path, monkeypatch):
    """The rows carry the rewrites, in order, and each batch's prompts went to the augmenter in one call."""
    from datasets import load_dataset

    from freeatm_hf.generate import run
    from freeatm_hf.prompts import PromptAugmenter

    calls = []

    class Tagging(PromptAugmenter):
        def complete_many(self, instructions):
            calls.append(len(instructions))
            return [None] * len(instructions)  # refused: the template prompt is kept...

        def many(self, prompts):
            kept = super().many(prompts)
            return [p.__class__.from_nouns(p.text + " today", p.nouns) for p in kept]  # ...and marked

    monkeypatch.setattr(run, "load_augmenter", lambda spec: Tagging())
    cfg = parse(["--output_dir", str(tmp_path / "out"), "--pipeline", "tiny", "--num_images", "5", "--batch_size",
                 "2", "--rows_per_shard", "4", "--num_inference_steps", "1", "--device", "cpu"])
    run.generate_dataset(cfg)
    rows = load_dataset(str(tmp_path / "out"), split="train")
    assert calls == [2, 2, 1]  # shard 0: rows 0-1, 2-3; shard 1: row 4
    expect = [run.PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny"])).items[i].text + " today"
              for i in range(5)]
    assert rows["prompt"] == expect


def test_a_shard_that_cannot_be_written_stops_the_run_before_another_shard_is_generated(tmp_path, monkeypatch):
    """A shard is written beside the next one's generation; its failure (a full disk) was raised only once that
    next shard was generated whole: on a GPU, up to an hour of images per process that could not be kept."""
    import errno
    import time

    from freeatm_hf.generate import run

    calls = []

    class Counting(run.FreeATMGenerator):
        def __call__(self, *args, **kwargs):
            calls.append(kwargs["seeds"])
            time.sleep(0.2)  # a real batch takes longer still: the failed write is long done
            return super().__call__(*args, **kwargs)

    def full_disk(self, shard, rows):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run, "FreeATMGenerator", Counting)
    monkeypatch.setattr(run.DatasetWriter, "write", full_disk)
    out = tmp_path / "out"
    cfg = parse(["--output_dir", str(out), "--pipeline", "tiny", "--num_images", "24", "--batch_size", "1",
                 "--rows_per_shard", "8", "--num_inference_steps", "1", "--device", "cpu"])
    with pytest.raises(OSError, match="No space left on device"):
        run.generate_dataset(cfg)
    assert len(calls) <= 8 + 2, f"{len(calls)} batches generated; shard 0's write failed after the 8th"
    assert not (out / "data").exists() and not (out / "README.md").exists()


def test_a_json_prompts_file_is_read_as_one_object_per_line_and_a_txt_as_plain_prompts(tmp_path):
    from freeatm_hf.generate.run import PromptSource

    line = '{"text": "a dog with a ball", "nouns": ["dog", "ball"]}\n'
    for name, text, nouns in (("p.json", "a dog with a ball", ["dog", "ball"]), ("p.txt", line.strip(), [])):
        (tmp_path / name).write_text(line)
        prompt = PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(tmp_path / name)]))[0]
        assert (prompt.text, prompt.nouns) == (text, nouns)


def test_a_prompts_file_is_utf_8_with_or_without_a_bom_and_its_lines_end_only_at_line_ends(tmp_path):
    """A file saved by Windows Notepad (a BOM, CRLF) and a caption holding U+2028 or U+0085 (which `json.dumps`
    leaves raw): the BOM failed line 1 of a JSONL file and began a .txt file's first prompt; `str.splitlines` cut
    a line at either character, in the middle of its JSON string."""
    from freeatm_hf.generate.run import PromptSource

    records = [{"text": "a café with a crêpe", "nouns": ["café", "crêpe"]},
               {"text": "a dog\u2028with a ball\x85in a park", "nouns": ["dog", "ball"]}]
    jsonl, txt = tmp_path / "p.jsonl", tmp_path / "p.txt"
    jsonl.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode("utf-8-sig"))
    txt.write_bytes("a café with a crêpe\r\n\r\na dog\u2028with a ball\r\n".encode("utf-8-sig"))
    source = PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(jsonl)]))
    assert [(p.text, p.nouns) for p in source.items] == [(r["text"], r["nouns"]) for r in records]
    source = PromptSource(parse(["--output_dir", "x", "--pipeline", "tiny", "--prompts_file", str(txt)]))
    assert [p.text for p in source.items] == ["a café with a crêpe", "a dog\u2028with a ball"]


def test_a_pipeline_without_a_recommendation_gets_the_documented_defaults_and_out_of_range_values_are_refused():
    """No freeatm.json (the tiny pipeline): the capture is CaptureConfig's own default, masks are cut at 0.4 on maps
    at attention resolution, guidance is 7.5 and scenes name 2 objects, as the help texts say."""
    from freeatm_hf.attention import CaptureConfig

    cfg = parse(["--output_dir", "x", "--pipeline", "tiny"])
    assert cfg.capture_config() == CaptureConfig()
    assert (cfg.refine, cfg.threshold_value, cfg.guidance_scale, cfg.num_objects) == ("none", 0.4, 7.5, 2)
    assert parse(["--output_dir", "x", "--pipeline", "tiny", "--threshold", "otsu"]).threshold_value == "otsu"
    with pytest.raises(ValueError, match="refine must be none or guided, got 'sharp'"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--refine", "sharp"])
    with pytest.raises(ValueError, match="--num_objects must be 1, 2 or 3, got 4"):
        parse(["--output_dir", "x", "--pipeline", "tiny", "--num_objects", "4"])


def test_every_spelling_of_a_dtype_is_recorded_as_the_dtype_it_loads_in():
    import torch

    from freeatm_hf.generate.config import canonical_setting
    from freeatm_hf.generate.pipelines import resolve_dtype

    cpu = torch.device("cpu")
    for spellings, dtype in ((("fp16", "float16"), torch.float16), (("bf16", "bfloat16"), torch.bfloat16),
                             (("fp32", "float32"), torch.float32)):
        for name in spellings:
            assert resolve_dtype(name, cpu) is dtype
            assert getattr(torch, canonical_setting("torch_dtype", name)) is dtype
    assert resolve_dtype("auto", cpu) is torch.float32 and resolve_dtype("auto", torch.device("cuda")) is torch.float16
    with pytest.raises(ValueError, match="unknown torch_dtype 'half'"):
        resolve_dtype("half", cpu)


def test_auto_dtype_is_bf16_for_a_flux_pipeline_on_a_gpu_and_recorded_so(tmp_path, monkeypatch):
    """Flux overflows fp16 (black or NaN pictures); "auto" reads the pipeline's class from its model_index.json
    before loading, so a Flux folder, Hub id or the tiny Flux loads in bf16 on a GPU, anything else in fp16."""
    import json

    import torch

    from freeatm_hf.generate.pipelines import resolve_dtype

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for cls, dtype in (("FluxPipeline", torch.bfloat16), ("StableDiffusion3Pipeline", torch.float16)):
        folder = tmp_path / cls
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
        assert resolve_dtype("auto", cuda, str(folder)) is dtype
        assert resolve_dtype("auto", cpu, str(folder)) is torch.float32
        with monkeypatch.context() as m:  # the GPU machine the run would be on
            m.setattr(torch.cuda, "is_available", lambda: True)
            settings = parse(["--output_dir", "x", "--pipeline", str(folder)]).settings()
        assert settings["resolved_dtype"] == str(dtype).removeprefix("torch.")
    assert resolve_dtype("auto", cuda, "tiny-flux") is torch.bfloat16
    assert resolve_dtype("auto", cuda, "tiny-sdxl") is torch.float16
    assert resolve_dtype("auto", cuda, "nobody/not-cached") is torch.float16  # unreadable offline: fp16 as before
    assert resolve_dtype("bfloat16", cuda, str(tmp_path / "StableDiffusion3Pipeline")) is torch.bfloat16


def test_a_recommendation_without_resolutions_holds_for_the_default_ones_only(tmp_path):
    """A freeatm.json whose capture names no down_factors was measured at the default 2,4: its mid block and layer
    weights do not carry over to other resolutions given on the command line."""
    (tmp_path / "freeatm.json").write_text('{"capture": {"include_mid": true, "layer_weights": {"up_blocks": 2.0}}}')
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--down_factors", "4"]).capture_config()
    assert (c.down_factors, c.include_mid, c.layer_weights) == ((4,), False, None)
    c = parse(["--output_dir", "x", "--pipeline", str(tmp_path), "--down_factors", "2", "4"]).capture_config()
    assert (c.down_factors, c.include_mid, c.layer_weights) == ((2, 4), True, {"up_blocks": 2.0})


def test_layer_weights_that_are_json_but_no_object_are_named():
    for bad in ("[1, 2]", "2", '"up_blocks"'):
        with pytest.raises(ValueError, match="layer_weights must be a JSON object of prefix: weight"):
            parse(["--output_dir", "x", "--pipeline", "tiny", "--layer_weights", bad])


def test_speed_memory_and_publishing_options_are_not_settings_of_the_rows_but_the_seed_is(tmp_path):
    """A run that ran out of memory resumes with a smaller batch (or offloaded, compiled, on another device, with
    another card licence or push target); another seed makes other rows."""
    base = ["--output_dir", str(tmp_path / "a"), "--pipeline", "tiny", "--torch_dtype", "float32"]
    ref = parse(base).settings()
    for other in (["--batch_size", "1"], ["--cpu_offload", "true"], ["--compile", "true"], ["--device", "cpu"],
                  ["--license", "cc-by-4.0"], ["--push_to_hub", "me/x", "--private", "true"]):
        assert parse(base + other).settings() == ref, other
    assert parse(["--output_dir", str(tmp_path / "b"), *base[2:]]).settings() == ref
    for other in (["--seed", "1"], ["--num_images", "3"], ["--guidance_scale", "2"]):
        assert parse(base + other).settings() != ref, other


def test_a_yml_recipe_an_empty_one_and_null_or_empty_list_keys(tmp_path):
    import dataclasses

    from freeatm_hf.generate.config import GenerateConfig

    recipe = tmp_path / "r.yml"  # the other YAML extension
    recipe.write_text("output_dir: out\npipeline: tiny\nnum_images: 5\nmap_size: null\nlayer_weights: {up_blocks: 2}\n")
    cfg = parse([str(recipe)])
    assert (cfg.output_dir, cfg.num_images, cfg.map_size, cfg.layer_weight_map()) == ("out", 5, None, {"up_blocks": 2})
    empty = tmp_path / "empty.yaml"  # no keys: every argument from the command line or its default
    empty.write_text("# nothing yet\n")
    default = {f.name: f.default for f in dataclasses.fields(GenerateConfig)}["num_images"]
    assert parse([str(empty), "--output_dir", "o", "--pipeline", "tiny"]).num_images == default
    bad = tmp_path / "bad.yaml"
    bad.write_text("output_dir: out\npipeline: tiny\ndown_factors: []\n")
    with pytest.raises(ValueError, match="recipe key 'down_factors' is an empty list"):
        parse([str(bad)])


@pytest.mark.parametrize("peak", ["nan", "inf", "-1", "1"])
def test_a_min_attention_peak_that_is_no_probability_is_refused(peak, tmp_path):
    # It was written into the card as given (.nan, .inf), and training then kept or dropped every object.
    with pytest.raises(ValueError, match="--min_attention_peak must be in \\[0, 1\\)"):
        parse(["--output_dir", str(tmp_path / "o"), "--pipeline", "tiny", "--min_attention_peak", peak])


@pytest.mark.parametrize("seed", ["-1", str(2**63 - 1)])
def test_a_seed_outside_what_image_seeds_can_hold_is_refused(seed, tmp_path):
    # -1 failed after the pipeline loaded; 2**63 - 1 generated, then tracebacked writing seed + 1 into int64.
    with pytest.raises(ValueError, match="--seed must be in"):
        parse(["--output_dir", str(tmp_path / "o"), "--pipeline", "tiny", "--num_images", "2", "--seed", seed])


@pytest.mark.parametrize("device, named", [("foo", "--device 'foo' is not a device"), ("cuda:7", "--device cuda:7: ")])
def test_a_device_the_machine_lacks_is_refused_before_the_pipeline_loads(device, named, tmp_path, monkeypatch):
    import torch

    import freeatm_hf.generate.pipelines as pipelines

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(pipelines, "load_pipeline", lambda *a, **k: pytest.fail("the pipeline was loaded"))
    with pytest.raises(ValueError, match=named):
        parse(["--output_dir", str(tmp_path / "o"), "--pipeline", "tiny", "--device", device])


@pytest.mark.parametrize("command", ["generate", "train"])
@pytest.mark.parametrize("text, says", [
    ("output_dir: [out\n", r"is not valid YAML: line 2: while parsing a flow sequence"),
    ("- output_dir\n- out\n", r"holds a list, not `key: value` lines")])
def test_a_recipe_that_is_no_yaml_mapping_is_named_in_one_line(command, text, says, tmp_path, capsys):
    # Both were tracebacks: the YAML parser's, or an AttributeError from reading a list's `.items()`.
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(SystemExit) as e:
        cli.run([command, str(recipe)])
    assert e.value.code == 2
    assert f"error: recipe {recipe} {says}" in capsys.readouterr().err


def test_an_output_dir_that_is_a_file_is_refused_by_name_before_anything_loads(tmp_path):
    """It was a NotADirectoryError traceback from deep in the folder lock ('.../out.parquet/.freeatm')."""
    taken = tmp_path / "out.parquet"
    taken.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=rf"--output_dir {taken} is a file, not a folder"):
        parse(["--output_dir", str(taken), "--pipeline", "tiny"])
    assert taken.read_bytes() == b"PAR1"
