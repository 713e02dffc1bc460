"""`freeatm eval`: flags the evaluation would not read are refused before any model or data is loaded."""

import pytest

from freeatm_hf.eval.cli import main


@pytest.fixture
def ckpt(tmp_path):
    """A folder that passes for a checkpoint until something reads it: these tests stop before any load."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    return str(tmp_path / "ckpt")


@pytest.mark.parametrize("flags", [["--finetune_lr", "1e-4"], ["--finetune_dir", "out", "--finetune_epochs", "2"]])
def test_retrieval_refuses_fine_tuning_settings_without_a_split_to_fine_tune_on(flags, ckpt):
    # Without --finetune_split the model is scored as it is: the settings would be dropped without a word.
    with pytest.raises(ValueError, match=r"--finetune_.* set how to fine-tune, which only --finetune_split asks for"):
        main(["retrieval", "--model", ckpt, "--dataset", "missing-data", *flags])


def test_retrieval_refuses_to_score_on_the_split_it_fine_tunes_on(ckpt):
    with pytest.raises(ValueError, match="--finetune_split and --split are both 'train' of d: the recall"):
        main(["retrieval", "--model", ckpt, "--dataset", "d", "--split", "train", "--finetune_split", "train",
              "--finetune_dir", "o"])


@pytest.mark.parametrize("what", ["finetune", "segment", "detect"])
def test_trainer_evaluations_refuse_a_device_index_they_cannot_honour(what, ckpt, monkeypatch):
    # Trainer puts the model on every visible GPU: cuda:1 would be dropped (DataParallel over all of them).
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a machine where cuda:1 exists
    with pytest.raises(ValueError, match=rf"--device cuda:1: eval {what} trains with Trainer.*CUDA_VISIBLE_DEVICES"):
        main([what, "--model", ckpt, "--dataset", "missing-data", "--output_dir", "o", "--device", "cuda:1"])
    with pytest.raises(ValueError, match=r"--device cuda:1: eval retrieval --finetune_split trains with Trainer"):
        main(["retrieval", "--model", ckpt, "--dataset", "d", "--finetune_split", "train", "--finetune_dir", "o",
              "--device", "cuda:1"])


def _record(monkeypatch, module: str, name: str, result):
    """Replace `module.name` by a recorder that returns `result`; its calls, as {parameter: value} of the real
    function's signature (so positional and keyword passing read alike)."""
    import importlib
    import inspect

    mod = importlib.import_module(module)
    signature, calls = inspect.signature(getattr(mod, name)), []

    def fake(*args, **kwargs):
        calls.append(dict(signature.bind(*args, **kwargs).arguments))
        return result

    monkeypatch.setattr(mod, name, fake)
    return calls


def test_each_evaluation_gets_every_flag_it_was_given(monkeypatch, tmp_path, ckpt):
    """What the command line says reaches the evaluation: a flag dropped, swapped or defaulted on the way would
    run another evaluation than the one asked for (and the card would record it as this one)."""
    base = ["--model", ckpt, "--dataset", "D", "--train_split", "tr", "--test_split", "te"]
    common = {"model_dir": ckpt, "dataset": "D", "train_split": "tr", "test_split": "te"}
    seg = _record(monkeypatch, "freeatm_hf.eval.segmentation", "finetune_segmentation", [{"metric": "miou"}])
    assert main(["segment", *base, "--output_dir", "O", "--image_column", "img", "--label_column", "lab",
                 "--num_labels", "5", "--reduce_labels", "--image_size", "96", "--epochs", "2.5", "--max_steps", "7",
                 "--learning_rate", "0.5", "--batch_size", "3", "--revision", "r1", "--device", "cpu"]) == [
        {"metric": "miou"}]
    assert seg == [{**common, "output_dir": "O", "image_column": "img", "label_column": "lab", "num_labels": 5,
                    "reduce_labels": True, "image_size": 96, "epochs": 2.5, "max_steps": 7, "learning_rate": 0.5,
                    "batch_size": 3, "revision": "r1", "use_cpu": True}]
    det = _record(monkeypatch, "freeatm_hf.eval.detection", "finetune_detection", [])
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # --device cuda, as on a machine with a GPU
    main(["detect", *base, "--output_dir", "O", "--epochs", "1.5", "--max_steps", "4", "--learning_rate", "0.25",
          "--batch_size", "2", "--min_size", "64", "--max_size", "96", "--trainable_layers", "5", "--device", "cuda"])
    assert det == [{**common, "output_dir": "O", "epochs": 1.5, "max_steps": 4, "learning_rate": 0.25,
                    "batch_size": 2, "min_size": 64, "max_size": 96, "trainable_layers": 5, "use_cpu": None}]
    ft = _record(monkeypatch, "freeatm_hf.eval.finetune", "finetune_classification", [])
    main(["finetune", *base, "--output_dir", "O", "--image_column", "img", "--label_column", "lab", "--image_size",
          "48", "--epochs", "3", "--learning_rate", "0.125", "--batch_size", "6", "--max_steps", "9", "--revision",
          "r2"])
    assert ft == [{**common, "output_dir": "O", "image_column": "img", "label_column": "lab", "image_size": 48,
                   "epochs": 3.0, "learning_rate": 0.125, "batch_size": 6, "max_steps": 9, "revision": "r2",
                   "use_cpu": None}]
    knn = _record(monkeypatch, "freeatm_hf.eval.frozen", "evaluate_frozen", [])
    main(["knn", *base, "--image_column", "img", "--label_column", "lab", "--image_size", "40", "--k", "7",
          "--temperature", "0.5", "--batch_size", "8", "--no_linear_probe", "--revision", "r3", "--device", "cpu"])
    assert knn == [{**common, "image_column": "img", "label_column": "lab", "image_size": 40, "k": 7,
                    "temperature": 0.5, "batch_size": 8, "linear": False, "revision": "r3", "device": "cpu"}]


def test_eval_masks_runs_the_configuration_given_and_writes_its_output(monkeypatch, tmp_path):
    import json

    pipes = _record(monkeypatch, "freeatm_hf.generate.pipelines", "load_pipeline", "the pipeline")
    result = {"capture": {"threshold": 0.4}, "test": {"miou": 0.5, "per_shape": {}}, "drawn_filter": None}
    runs = _record(monkeypatch, "freeatm_hf.toy.mask_eval", "evaluate_masks", result)
    out = tmp_path / "sub" / "masks.json"
    main(["masks", "--pipeline", "tiny", "--num_scenes", "3", "--num_val", "2", "--num_inference_steps", "4",
          "--guidance_scale", "2.5", "--guidance_sweep", "1", "3", "--batch_size", "5", "--seed", "11", "--sweep",
          "--device", "cpu", "--output", str(out)])
    assert [(p["spec"], str(p["device"])) for p in pipes] == [("tiny", "cpu")]
    (run,) = runs
    assert run["pipe"] == "the pipeline" and run["sweep"] is True
    cfg = run["cfg"]
    assert (cfg.num_scenes, cfg.num_val, cfg.num_inference_steps, cfg.guidance_scale, cfg.batch_size, cfg.seed,
            tuple(cfg.guidance_sweep)) == (3, 2, 4, 2.5, 5, 11, (1.0, 3.0))
    assert json.loads(out.read_text()) == {"pipeline": "tiny", **result}


def test_finetune_leaves_an_unset_size_to_the_checkpoints_own(monkeypatch, tmp_path):
    """A 32-px MAE fine-tuned at eval's 224 would fail at its first batch (fixed position embeddings): without
    --image_size the CLI passes none, and `finetune_classification` takes the checkpoint's own (tested in
    test_frozen_eval), once the data has passed its checks."""
    from tests.eval.test_frozen_eval import tiny_checkpoint

    tiny_checkpoint("mae").save_pretrained(tmp_path)
    ft = _record(monkeypatch, "freeatm_hf.eval.finetune", "finetune_classification", [])
    main(["finetune", "--model", str(tmp_path), "--dataset", "D", "--output_dir", "O"])
    main(["finetune", "--model", str(tmp_path), "--dataset", "D", "--output_dir", "O", "--image_size", "48"])
    assert [c["image_size"] for c in ft] == [None, 48]


class _Stop(Exception):
    pass


def test_retrieval_fine_tunes_with_the_flags_given_and_on_another_datasets_split_of_the_scored_name(monkeypatch, ckpt):
    """Another dataset's `test` split is not the scored one; its revision is not the scored dataset's either.
    Fine-tuning settings left unset keep `finetune_retrieval`'s own defaults (BLIP's)."""
    import inspect

    import freeatm_hf.eval.retrieval as retrieval

    signature, calls = inspect.signature(retrieval.finetune_retrieval), []

    def fake(*args, **kwargs):
        calls.append(dict(signature.bind(*args, **kwargs).arguments))
        raise _Stop  # what follows loads the fine-tuned model

    monkeypatch.setattr(retrieval, "finetune_retrieval", fake)
    import freeatm_hf.eval.cli as eval_cli

    monkeypatch.setattr(eval_cli, "blip_text_length", lambda model, n: n)  # its config.json is empty
    base = ["retrieval", "--model", ckpt, "--dataset", "D", "--revision", "r1", "--finetune_dir", "O",
            "--image_size", "48", "--max_length", "20", "--batch_size", "2", "--device", "cpu",
            "--image_column", "img", "--caption_column", "cap"]
    with pytest.raises(_Stop):
        main([*base, "--finetune_split", "test", "--finetune_dataset", "F", "--finetune_max_steps", "3"])
    with pytest.raises(_Stop):
        main([*base, "--finetune_split", "train", "--finetune_epochs", "2", "--finetune_lr", "0.5"])
    same = {"model_dir": ckpt, "output_dir": "O", "image_column": "img", "caption_column": "cap", "image_size": 48,
            "max_length": 20, "batch_size": 2, "use_cpu": True}
    assert calls == [{**same, "dataset": "F", "split": "test", "max_steps": 3, "revision": None},
                     {**same, "dataset": "D", "split": "train", "epochs": 2.0, "learning_rate": 0.5, "revision": "r1"}]


def test_retrieval_scores_at_the_size_and_with_the_re_ranking_depth_given(monkeypatch, tmp_path):
    import torch
    from datasets import Dataset
    from PIL import Image

    import freeatm_hf.eval.retrieval as retrieval
    from freeatm_hf.train.blip import BlipArguments, build_blip

    model, tok = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32))
    model.save_pretrained(tmp_path / "blip")
    tok.save_pretrained(tmp_path / "blip")
    rows = [{"image": Image.new("RGB", (40, 30), (60 * i, 0, 0)), "caption": f"square {i}"} for i in range(3)]
    (tmp_path / "ret" / "data").mkdir(parents=True)
    Dataset.from_list(rows).to_parquet(str(tmp_path / "ret" / "data" / "test-00000-of-00001.parquet"))
    seen, scores = [], retrieval.retrieval_scores

    def scored(model, pixel_values, *args, **kwargs):
        batches = list(pixel_values)
        seen.append(([tuple(b.shape) for b in batches], args, kwargs))
        return scores(model, batches, *args, **kwargs)

    monkeypatch.setattr(retrieval, "retrieval_scores", scored)
    r = main(["retrieval", "--model", str(tmp_path / "blip"), "--dataset", str(tmp_path / "ret"), "--k_test", "2",
              "--image_size", "48", "--batch_size", "2", "--device", "cpu"])
    ((shapes, args, kwargs),) = seen
    assert shapes == [(2, 3, 48, 48), (1, 3, 48, 48)]
    assert args[2:] == (2, 2) and not kwargs  # k_test, batch_size
    assert r["k_test"] == 2 and r["images"] == 3
    assert torch.equal(args[0], tok([f"square {i}" for i in range(3)], padding="max_length", truncation=True,
                                    max_length=35, return_tensors="pt").input_ids)


# Where a check comes too late, what `eval masks` then runs before failing: seconds, not minutes.
FAST_MASKS = ["--num_scenes", "1", "--num_val", "1", "--num_inference_steps", "2"]


@pytest.mark.parametrize("what, flags, named", [
    ("masks", ["--batch_size", "-1"], "--batch_size must be at least 1"),  # evaluated no scene, wrote a recommendation
    ("masks", ["--num_scenes", "0"], "--num_scenes must be at least 1"),
    ("masks", ["--num_val", "0"], "--num_val must be at least 1"),
    ("masks", ["--num_inference_steps", "0"], "--num_inference_steps must be at least 1"),
    ("masks", ["--seed", "-1"], "--seed must be >= 0"),
    # Refused by the generator only once the pipeline had loaded, under its own argument's name.
    ("masks", ["--guidance_scale", "nan", *FAST_MASKS], "--guidance_scale: nan is not a guidance scale"),
    ("masks", ["--guidance_sweep", "4", "-1", *FAST_MASKS], "--guidance_sweep: -1.0 is not a guidance scale"),
    ("knn", ["--image_size", "0"], "--image_size must be at least 1"),  # was replaced by the checkpoint's size
    ("finetune", ["--output_dir", "o", "--epochs", "0"], "--epochs must be a finite number > 0"),
    ("finetune", ["--output_dir", "o", "--learning_rate", "inf"], "--learning_rate must be a finite number > 0"),
    ("finetune", ["--output_dir", "o", "--max_steps", "0"], "--max_steps must be at least 1"),
    ("segment", ["--output_dir", "o", "--learning_rate", "0"], "--learning_rate must be a finite number > 0"),
    ("segment", ["--output_dir", "o", "--num_labels", "0"], "--num_labels must be at least 1"),
    ("detect", ["--output_dir", "o", "--min_size", "0"], "--min_size must be at least 1"),
    # torchvision refused them once the annotations and the checkpoint had loaded, not by the flag.
    ("detect", ["--output_dir", "o", "--trainable_layers", "6"], "--trainable_layers is how many .* 0 to 5; got 6"),
    ("detect", ["--output_dir", "o", "--trainable_layers", "-1"], "--trainable_layers .* got -1"),
    ("retrieval", ["--max_length", "0"], "--max_length must be at least 1"),
    ("retrieval", ["--finetune_split", "train", "--finetune_dir", "o", "--finetune_epochs", "0"],
     "--finetune_epochs must be a finite number > 0"),
    ("retrieval", ["--finetune_split", "train", "--finetune_dir", "o", "--finetune_max_steps", "-3"],
     "--finetune_max_steps must be at least 1"),
])
def test_counts_rates_and_sizes_that_mean_nothing_are_refused_before_anything_loads(what, flags, named, ckpt):
    """A 0 or negative count, a rate of 0 or inf ran (or evaluated nothing) and recorded its result as the model's."""
    needs = [] if what == "masks" else ["--model", ckpt, "--dataset", "missing-data"]
    with pytest.raises(ValueError, match=named):
        main([what, *needs, *flags])


@pytest.mark.parametrize("what", ["knn", "retrieval"])
def test_a_checkpoint_that_is_not_there_is_named_before_the_data_loads(what, tmp_path):
    # transformers' word for it was that the repo id has bad characters, after the dataset had loaded.
    with pytest.raises(FileNotFoundError, match=r"^--model /no/such/ckpt: no such folder$"):
        main([what, "--model", "/no/such/ckpt", "--dataset", str(tmp_path / "no-data")])
