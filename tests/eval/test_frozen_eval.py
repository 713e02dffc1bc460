"""Checkpoint → kNN / linear probe on a labelled dataset → results JSON → model card with model-index."""

import json

import pytest


@pytest.fixture(scope="module")
def labelled_shapes(tmp_path_factory):
    """Single-object rendered scenes labelled by shape, with train and test splits (Hub file layout)."""
    from datasets import ClassLabel, Dataset

    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    folder = tmp_path_factory.mktemp("labelled") / "shapes"
    (folder / "data").mkdir(parents=True)
    for split, seed, n in (("train", 1, 60), ("test", 2, 30)):
        world = ShapesWorld(seed=seed, min_objects=1, max_objects=1)
        specs = world.scenes(n)
        images, _ = world.render(specs)
        from PIL import Image

        rows = [{"image": Image.fromarray(i.numpy()), "label": SHAPES.index(s.objects[0].shape)}
                for i, s in zip(images, specs)]
        ds = Dataset.from_list(rows).cast_column("label", ClassLabel(names=list(SHAPES)))
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def tiny_checkpoint(method: str):
    from freeatm_hf.models import MAEConfig, MAEModel, SimCLRConfig, SimCLRModel
    from freeatm_hf.train.mae import SIZES

    if method == "simclr":
        return SimCLRModel(SimCLRConfig(backbone="resnet18", proj_hidden_dim=16, proj_dim=8))
    return MAEModel(MAEConfig(image_size=32, patch_size=8, **SIZES["tiny"]))


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_knn_and_linear_probe_results_land_in_the_card(method, labelled_shapes, tmp_path):
    from huggingface_hub import ModelCard

    from freeatm_hf.eval.cli import main
    from freeatm_hf.hub.model_card import write_model_card

    model = tiny_checkpoint(method)
    model.save_pretrained(tmp_path)
    write_model_card(tmp_path, model.config, data={"dataset": "me/scenes", "data_mode": "synthetic"})
    results = main(["knn", "--model", str(tmp_path), "--dataset", labelled_shapes, "--image_size", "32", "--k", "5",
                    "--batch_size", "16", "--device", "cpu"])
    assert [r["metric"] for r in results] == ["knn5_top1", "linear_probe_top1"]
    # Chance is 1/6; even a random network's features separate rendered silhouettes somewhat.
    assert all(0.0 <= r["value"] <= 1.0 for r in results)
    stored = json.loads((tmp_path / "eval_results.json").read_text())
    card = ModelCard.load(tmp_path / "README.md")
    got = sorted((e.metric_type, e.metric_value, e.dataset_split) for e in card.data.eval_results)
    assert got == sorted((r["metric"], r["value"], r["split"]) for r in stored)
    assert card.data.library_name == "freeatm_hf" and "freeatm" in card.data.tags
    assert card.data.datasets == ["me/scenes"]
    assert "knn5_top1" in card.text


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_finetune_runs_through_trainer_and_reports_top1_to_the_card(method, labelled_shapes, tmp_path):
    from huggingface_hub import ModelCard

    from freeatm_hf.eval.cli import main

    model = tiny_checkpoint(method)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    (r,) = main(["finetune", "--model", str(ckpt), "--dataset", labelled_shapes, "--output_dir", str(tmp_path / "ft"),
                 "--image_size", "32", "--epochs", "3", "--batch_size", "16", "--learning_rate", "3e-3", "--device", "cpu"])
    assert r["metric"] == "finetune_top1" and 0.0 <= r["value"] <= 1.0
    card = ModelCard.load(ckpt / "README.md")
    assert [e.metric_type for e in card.data.eval_results] == ["finetune_top1"]
    # The fine-tuned classifier is kept, named labels and all: MAE's as a stock ViT classifier, a CNN's for timm.
    names = ["circle", "square", "triangle", "star", "hexagon", "cross"]
    if method == "mae":
        from transformers import ViTForImageClassification

        clf = ViTForImageClassification.from_pretrained(tmp_path / "ft")
        assert clf.config.id2label == dict(enumerate(names)) and clf.config.label2id["star"] == 3
        # Served by the stock pipeline, its processor feeding what the evaluation scored: the whole image resized
        # (bilinear) to the fine-tuned side, ImageNet statistics.
        import torch
        from datasets import load_dataset
        from torchvision.transforms import v2
        from transformers import AutoImageProcessor, pipeline

        from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD

        image = load_dataset(labelled_shapes, split="test")[0]["image"].convert("RGB").resize((50, 40))
        ours = v2.Compose([v2.PILToTensor(), v2.Resize((32, 32), antialias=True), v2.ToDtype(torch.float32, scale=True),
                           v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(image)
        theirs = AutoImageProcessor.from_pretrained(tmp_path / "ft")(image, return_tensors="pt").pixel_values[0]
        assert (theirs - ours).abs().mean() < 0.02 and (theirs - ours).abs().max() < 0.2
        clf.eval()
        with torch.no_grad():
            best = names[int(clf(pixel_values=theirs[None]).logits.argmax())]
        assert pipeline("image-classification", model=str(tmp_path / "ft"))(image, top_k=1)[0]["label"] == best
    else:
        import timm

        clf = timm.create_model(f"local-dir:{tmp_path / 'ft'}", pretrained=True)
        assert clf.num_classes == 6 and clf.pretrained_cfg["label_names"] == names


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_a_bf16_checkpoint_is_evaluated_as_its_float32_copy(method, labelled_shapes, tmp_path):
    """transformers 5 loads a checkpoint in the dtype it was saved in: a bf16 one met the float32 pixels in its
    first layer ("Input type (float) and bias type (BFloat16)"), in kNN and fine-tuning alike. Evaluated in
    float32, its scores are those of the same (bf16-rounded) weights saved in float32."""
    import torch

    from freeatm_hf.eval.cli import main

    half = tiny_checkpoint(method).to(torch.bfloat16)
    half.save_pretrained(tmp_path / "bf16")
    half.float().save_pretrained(tmp_path / "fp32")
    common = ["--dataset", labelled_shapes, "--image_size", "32", "--batch_size", "16", "--device", "cpu"]
    knn = {d: main(["knn", "--model", str(tmp_path / d), "--k", "5", *common]) for d in ("bf16", "fp32")}
    assert [r["value"] for r in knn["bf16"]] == [r["value"] for r in knn["fp32"]]
    tuned = {d: main(["finetune", "--model", str(tmp_path / d), "--output_dir", str(tmp_path / f"ft-{d}"),
                      "--epochs", "1", "--learning_rate", "3e-3", *common]) for d in ("bf16", "fp32")}
    assert tuned["bf16"][0]["value"] == tuned["fp32"][0]["value"]


def test_a_vit_checkpoint_is_evaluated_at_its_own_size_by_default(labelled_shapes, tmp_path):
    from freeatm_hf.eval.cli import main
    from freeatm_hf.eval.frozen import checkpoint_image_size

    mae, cnn = tmp_path / "mae", tmp_path / "cnn"
    tiny_checkpoint("mae").save_pretrained(mae)
    tiny_checkpoint("simclr").save_pretrained(cnn)
    assert checkpoint_image_size(str(mae)) == 32 and checkpoint_image_size(str(cnn)) == 224
    # A CNN trained at 48 px (its card facts say so) is evaluated at 48, the size its timm export states.
    from freeatm_hf.hub.export import export_checkpoint
    from freeatm_hf.hub.model_card import write_model_card

    write_model_card(cnn, tiny_checkpoint("simclr").config, data={"dataset": "me/scenes", "image_size": 48})
    export_checkpoint(str(cnn), str(tmp_path / "timm"), "timm")
    stated = json.loads((tmp_path / "timm" / "config.json").read_text())["pretrained_cfg"]["input_size"]
    assert checkpoint_image_size(str(cnn)) == 48 == stated[-1]
    # No --image_size: a 32-px MAE would fail at 224 (fixed position embeddings).
    results = main(["knn", "--model", str(mae), "--dataset", labelled_shapes, "--k", "5", "--batch_size", "16",
                    "--device", "cpu", "--no_linear_probe"])
    assert results[0]["metric"] == "knn5_top1" and 0.0 <= results[0]["value"] <= 1.0


def test_the_python_api_evaluates_and_fine_tunes_at_the_checkpoints_own_size_by_default(labelled_shapes, tmp_path,
                                                                                        monkeypatch):
    """As `freeatm eval knn` and `eval finetune` do: at a fixed 224 a 32-px MAE fails (its position embeddings are
    fixed), and a CNN trained at 48 px would be scored at a size it never saw, the card saying nothing of it."""
    from freeatm_hf.eval import frozen
    from freeatm_hf.eval.finetune import finetune_classification
    from freeatm_hf.hub.model_card import write_model_card

    mae, cnn = tmp_path / "mae", tmp_path / "cnn"
    tiny_checkpoint("mae").save_pretrained(mae)
    model = tiny_checkpoint("simclr")
    model.save_pretrained(cnn)
    write_model_card(cnn, model.config, data={"dataset": "me/scenes", "image_size": 48})
    sizes, transform = [], frozen.eval_transform
    monkeypatch.setattr(frozen, "eval_transform", lambda size, *a: sizes.append(size) or transform(size, *a))
    for folder in (mae, cnn):
        (r,) = frozen.evaluate_frozen(str(folder), labelled_shapes, k=5, batch_size=32, linear=False, device="cpu",
                                      update_card=False)
        assert r["metric"] == "knn5_top1" and 0 <= r["value"] <= 1
    assert sizes == [32, 48]
    (r,) = finetune_classification(str(mae), labelled_shapes, str(tmp_path / "ft"), max_steps=1, batch_size=16,
                                   use_cpu=True, update_card=False)
    assert r["metric"] == "finetune_top1" and 0 <= r["value"] <= 1
    processor = json.loads((tmp_path / "ft" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}


def unread_checkpoint(tmp_path) -> str:
    """A folder that passes for a checkpoint until its config is read: the data is checked before any model loads."""
    (tmp_path / "never-loaded").mkdir()
    (tmp_path / "never-loaded" / "config.json").write_text("{}")
    return str(tmp_path / "never-loaded")


def test_splits_and_columns_are_checked_before_any_model_loads(labelled_shapes, tmp_path):
    from freeatm_hf.eval.cli import main

    missing = unread_checkpoint(tmp_path)
    base = ["knn", "--model", missing, "--dataset", labelled_shapes, "--image_size", "32"]
    with pytest.raises(ValueError, match="train_split and test_split are both 'train'"):
        main(base + ["--test_split", "train"])
    with pytest.raises(ValueError, match=r"\[train\] has no column 'nolabel' .*--label_column"):
        main(base + ["--label_column", "nolabel"])
    with pytest.raises(ValueError, match=r"column 'image' is Image\(.*not a class index"):
        main(base + ["--label_column", "image"])
    with pytest.raises(ValueError, match="has no column 'nolabel'"):
        main(["finetune", "--model", missing, "--dataset", labelled_shapes, "--output_dir", str(tmp_path / "ft"),
              "--image_size", "32", "--label_column", "nolabel"])


def test_unlabelled_rows_are_refused_not_counted_as_misses(labelled_shapes, tmp_path):
    """The Hub marks a row without a class -1 (ImageNet's test split): scored, it would be a miss the model never
    made."""
    import shutil

    from datasets import load_dataset

    from freeatm_hf.eval.cli import main

    folder = tmp_path / "shapes"
    shutil.copytree(labelled_shapes, folder)
    test = load_dataset(labelled_shapes, split="test")
    test.map(lambda r, i: {"label": -1 if i % 3 == 0 else r["label"]}, with_indices=True).to_parquet(
        str(folder / "data" / "test-00000-of-00001.parquet"))
    base = ["--model", unread_checkpoint(tmp_path), "--dataset", str(folder), "--image_size", "32"]
    with pytest.raises(ValueError, match=r"\[test\] has 10 of 30 rows without a class"):
        main(["knn", *base])
    with pytest.raises(ValueError, match=r"\[test\] has 10 of 30 rows without a class"):
        main(["finetune", *base, "--output_dir", str(tmp_path / "ft")])


def test_a_blip_checkpoint_is_refused_with_the_way_to_probe_its_vision_tower():
    from freeatm_hf.eval.frozen import feature_backbone
    from freeatm_hf.train.blip import BlipArguments, build_blip

    model, _ = build_blip(BlipArguments(dataset="unused", model_size="tiny", image_size=32))
    with pytest.raises(ValueError, match=r"not BlipATMModel: export its vision tower \(`freeatm export DIR OUT --to timm`"):
        feature_backbone(model)


def test_knn_and_probe_run_on_the_test_splits_features_with_the_given_k_and_temperature(labelled_shapes, tmp_path,
                                                                                          monkeypatch):
    """The vote and the probe get the train split's features as their memory and the test split's as queries,
    with --k and --temperature as given; each result is the top-1 accuracy of those scores on the test labels."""
    import torch

    import freeatm_hf.eval.frozen as frozen
    from freeatm_hf.eval.knn import accuracy

    calls = {"features": [], "knn": [], "probe": []}

    def record(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls[name].append((args, kwargs, out))
            return out
        return wrapped

    monkeypatch.setattr(frozen, "extract_features", record("features", frozen.extract_features))
    monkeypatch.setattr(frozen, "knn_classify", record("knn", frozen.knn_classify))
    monkeypatch.setattr(frozen, "linear_probe", record("probe", frozen.linear_probe))
    tiny_checkpoint("simclr").save_pretrained(tmp_path)
    results = frozen.evaluate_frozen(str(tmp_path), labelled_shapes, image_size=32, k=3, temperature=0.5,
                                     batch_size=32, device="cpu", update_card=False)
    (_, _, (xtr, ytr)), (_, _, (xte, yte)) = calls["features"]
    assert (len(xtr), len(xte)) == (60, 30)
    (args, kwargs, knn_scores), = calls["knn"]
    assert all(torch.equal(a, b) for a, b in zip(args[:3], (xtr, ytr, xte), strict=True))
    assert kwargs["k"] == 3 and kwargs["temperature"] == 0.5
    (args, _, probe_scores), = calls["probe"]
    assert all(torch.equal(a, b) for a, b in zip(args[:3], (xtr, ytr, xte), strict=True))
    assert [(r["metric"], r["value"]) for r in results] == [("knn3_top1", accuracy(knn_scores, yte)),
                                                            ("linear_probe_top1", accuracy(probe_scores, yte))]


def test_mae_features_for_probes_are_the_unmasked_encoders_in_patch_order(tmp_path):
    """A ViTMAE encoder probed with its mask ratio set to 0 and every patch in its order: the plain ViT's output
    (the encoder exported as a stock ViTModel), the model's own mask ratio left as it was."""
    import torch
    from transformers import ViTModel

    from freeatm_hf.eval.frozen import feature_backbone
    from freeatm_hf.models.mae import export_vit

    torch.manual_seed(0)
    model = tiny_checkpoint("mae").eval()
    assert model.config.mask_ratio == 0.75
    export_vit(model, tmp_path)
    vit = ViTModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = feature_backbone(model).forward_features(x)
        want = vit(x).last_hidden_state
    assert got.shape == want.shape == (2, 17, model.config.hidden_size)
    assert (got - want).abs().max().item() < 1e-5
    assert model.vit.config.mask_ratio == 0.75


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_frozen_eval_preprocesses_as_timm_does_for_the_checkpoints_export(method, labelled_shapes, tmp_path,
                                                                          monkeypatch):
    """What `freeatm eval knn` feeds the backbone is what timm's eval transform makes from the checkpoint's timm
    export (crop, filter: MAE's bicubic, bilinear for the CNNs; statistics), so a user's timm evaluation of the
    published backbone repeats the card's; up to one 8-bit level of PIL against torchvision rounding."""
    import numpy as np
    import timm
    from PIL import Image

    import freeatm_hf.eval.frozen as frozen
    from freeatm_hf.hub.export import export_timm

    class Seen(Exception):
        pass

    def capture(backbone, dataset, transform, *args, **kwargs):
        seen.append(transform)
        raise Seen

    seen = []
    monkeypatch.setattr(frozen, "extract_features", capture)
    model = tiny_checkpoint(method)
    model.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(Seen):
        frozen.evaluate_frozen(str(tmp_path / "ckpt"), labelled_shapes, image_size=32, device="cpu", update_card=False)
    export_timm(model, tmp_path / "timm", image_size=32)  # the size a card of a 32-px run states
    encoder = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True)
    stock = timm.data.create_transform(**timm.data.resolve_data_config({}, model=encoder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    got, want = seen[0](image), stock(image)
    assert got.shape == want.shape == (3, 32, 32)
    assert (got - want).abs().max().item() < 1.01 / 255 / 0.224


def test_finetuned_cnn_top1_is_its_accuracy_on_the_resized_test_images(labelled_shapes, tmp_path):
    """The fine-tuned CNN is a timm model folder: timm alone loads the classifier with its label names, and its own
    data config's transform of the test split gives back the reported top-1; the head was trained, not left at
    its start."""
    import timm
    import torch
    from datasets import load_dataset

    from freeatm_hf.eval.finetune import finetune_classification

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    (r,) = finetune_classification(str(ckpt), labelled_shapes, str(tmp_path / "ft"), image_size=32, max_steps=3,
                                   batch_size=16, learning_rate=0.05, update_card=False, use_cpu=True)
    assert (r["metric"], r["split"], r["task"]) == ("finetune_top1", "test", "image-classification")
    test = load_dataset(labelled_shapes, split="test")
    clf = timm.create_model(f"local-dir:{tmp_path / 'ft'}", pretrained=True).eval()
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["label_names"] == test.features["label"].names and clf.num_classes == 6  # the six shapes
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=clf))
    with torch.no_grad():
        logits = clf(torch.stack([tf(im.convert("RGB")) for im in test["image"]]))
    assert r["value"] == pytest.approx((logits.argmax(1) == torch.tensor(test["label"])).float().mean().item(),
                                       abs=1.01 / len(test))  # PIL's resize against torchvision's: one image at most
    torch.manual_seed(0)  # the head's start: finetune_classification seeds it with its seed (0)
    start = torch.nn.Linear(clf.num_features, 6)
    assert not torch.equal(start.weight, clf.get_classifier().weight)


def test_the_finetuned_cnn_states_no_test_size_or_licence_of_the_architectures_imagenet_weights(tmp_path):
    """save_for_hf starts from the architecture's default config: a fine-tuned ResNet-18 stated timm's ImageNet
    test size, 288 px, which timm's validate.py (use_test_size) evaluates at, and that weights' licence."""
    import timm

    from freeatm_hf.eval.finetune import CNNClassifier, save_timm_classifier
    from freeatm_hf.hub.export import INHERITED_CFG_KEYS

    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    save_timm_classifier(CNNClassifier(backbone, 3), tmp_path, "resnet18", ["a", "b", "c"], image_size=32)
    assert not set(INHERITED_CFG_KEYS) & set(json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"])
    clf = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    for use_test_size in (False, True):
        cfg = timm.data.resolve_data_config({}, model=clf, use_test_size=use_test_size)
        assert (cfg["input_size"], cfg["crop_pct"], cfg["crop_mode"]) == ((3, 32, 32), 1.0, "squash")


def test_the_cnn_classifier_is_a_linear_head_on_the_average_pooled_feature_map():
    import torch

    from freeatm_hf.eval.finetune import CNNClassifier, classification_model

    torch.manual_seed(0)
    pretrained = tiny_checkpoint("simclr").eval()
    before = {k: v.clone() for k, v in pretrained.state_dict().items()}
    clf = classification_model(pretrained, num_labels=4)
    assert isinstance(clf, CNNClassifier)
    x, labels = torch.randn(3, 3, 96, 96), torch.tensor([0, 3, 1])  # a 3 × 3 feature map
    out = clf(x, labels)
    with torch.no_grad():
        feats = pretrained.backbone.forward_features(x).mean((2, 3))
    head = clf.model.get_classifier()
    torch.testing.assert_close(out["logits"], feats @ head.weight.T + head.bias)
    with torch.no_grad():  # fine-tuning trains a copy: the pretrained model is left as it was
        head.weight.add_(1.0)
        next(clf.model.parameters()).add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in pretrained.state_dict().items())
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(out["logits"], labels))
    assert clf(x)["loss"] is None
    with pytest.raises(ValueError, match="no classification fine-tuning for"):
        classification_model(torch.nn.Linear(2, 2), 4)


@pytest.fixture(scope="module")
def oblong_digits(tmp_path_factory):
    """Noise images wider than tall with plain int labels (no ClassLabel names); class 2 is in the test split only."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    folder = tmp_path_factory.mktemp("oblong") / "digits"
    (folder / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, labels in (("train", [0, 1, 0, 1]), ("test", [0, 2, 1])):
        rows = [{"image": Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)), "label": y}
                for y in labels]
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return str(folder)


def untrained_finetune(model_dir, dataset, output_dir, evaluate=False, **kwargs):
    """`finetune_classification` with Trainer's training (and unless `evaluate`, its evaluation) stubbed out
    (seconds, not minutes): the classifier is saved with its head as drawn; the Trainer comes back for inspection."""
    import transformers

    from freeatm_hf.eval.finetune import finetune_classification

    trainers = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.Trainer, "train", lambda self, *a, **k: trainers.append(self))
        if not evaluate:
            mp.setattr(transformers.Trainer, "evaluate", lambda self, *a, **k: {"eval_top1": 0.5})
        results = finetune_classification(str(model_dir), dataset, str(output_dir), image_size=32, use_cpu=True,
                                          **kwargs)
    return results, trainers[0]


def test_a_finetune_on_int_labels_saves_a_timm_classifier_whose_config_preprocesses_as_the_test_split_was(
        oblong_digits, tmp_path):
    """Plain int labels: a logit for every class up to the largest of either split, named by its id. timm's own
    eval transform, from the saved folder's data config, makes of each (non-square) test image the tensor that was
    scored: the whole image squashed to the side, bilinear, ImageNet statistics."""
    import timm
    import torch
    from datasets import load_dataset

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    (r,), trainer = untrained_finetune(ckpt, oblong_digits, tmp_path / "ft", seed=5, update_card=False)
    assert (r["split"], r["value"]) == ("test", 0.5)
    assert trainer.args.seed == 5  # Trainer's own draws (data order, augmentation) follow the seed given
    assert not (ckpt / "eval_results.json").exists()  # update_card=False
    clf = timm.create_model(f"local-dir:{tmp_path / 'ft'}", pretrained=True).eval()
    assert clf.num_classes == 3 and clf.pretrained_cfg["label_names"] == ["0", "1", "2"]
    tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=clf))
    test = load_dataset(oblong_digits, split="test")
    for i, image in enumerate(test["image"]):
        scored, stock = trainer.eval_dataset[i]["pixel_values"], tf(image.convert("RGB"))
        assert scored.shape == stock.shape == (3, 32, 32)
        assert (scored - stock).abs().max().item() < 1.01 / 255 / 0.224  # PIL's rounding against torchvision's
    x = torch.stack([trainer.eval_dataset[i]["pixel_values"] for i in range(len(test))])
    with torch.no_grad():
        torch.testing.assert_close(clf(x), trainer.model(x)["logits"])


def test_a_finetune_on_the_cpu_pins_no_memory(oblong_digits, tmp_path):
    """Every downstream fine-tune (classification, segmentation, detection, retrieval) shares these arguments: on a
    machine without a GPU, no --device given (use_cpu=None, as the CLI passes), torch warned at every data loader
    that pin_memory is set but no accelerator is found. (With a GPU the run is there and pins, as it should.)"""
    import warnings

    from freeatm_hf.eval.finetune import finetune_classification

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        finetune_classification(str(ckpt), oblong_digits, str(tmp_path / "ft"), image_size=32, max_steps=1,
                                batch_size=2, update_card=False)
    assert not [w for w in caught if "pin_memory" in str(w.message)]


def test_the_finetuned_heads_start_is_its_seeds_whatever_was_drawn_before(oblong_digits, tmp_path):
    """Trainer seeds only once the model exists: the head must be drawn after `finetune_classification` seeds."""
    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    heads = []
    for before, seed in ((1, 0), (2, 0), (1, 3)):
        torch.manual_seed(before)
        untrained_finetune(ckpt, oblong_digits, tmp_path / f"ft{before}-{seed}", seed=seed, update_card=False)
        heads.append(load_file(tmp_path / f"ft{before}-{seed}" / "model.safetensors")["fc.weight"])
    assert heads[0].equal(heads[1]) and not heads[0].equal(heads[2])


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_only_the_main_process_saves_the_classifier_and_writes_the_card(method, oblong_digits, tmp_path,
                                                                        monkeypatch):
    """Under `accelerate launch` every process fine-tunes; the others writing the folder or the card at the same
    time would race the main one."""
    import transformers

    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 1))  # rank 1 of 2
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(method).save_pretrained(ckpt)
    results, _ = untrained_finetune(ckpt, oblong_digits, tmp_path / "ft")
    assert results == []
    assert not any((tmp_path / "ft").glob("*.safetensors")) and not (tmp_path / "ft" / "config.json").exists()
    assert not (ckpt / "eval_results.json").exists() and not (ckpt / "README.md").exists()


@pytest.mark.parametrize("method", ["simclr", "mae"])
def test_the_finetuned_classifier_is_saved_before_the_test_split_is_scored(method, oblong_digits, tmp_path,
                                                                           monkeypatch):
    """A scoring that fails (a test image that does not decode, memory) lost the whole fine-tune: the classifier
    was saved only once scored, as eval segment and eval detect save theirs first."""
    import transformers

    def unreadable(self, *args, **kwargs):
        raise OSError("image file is truncated")

    monkeypatch.setattr(transformers.Trainer, "evaluate", unreadable)
    ckpt = tmp_path / "ckpt"
    tiny_checkpoint(method).save_pretrained(ckpt)
    with pytest.raises(OSError, match="truncated"):
        untrained_finetune(ckpt, oblong_digits, tmp_path / "ft", evaluate=True)
    assert (tmp_path / "ft" / "model.safetensors").is_file() and (tmp_path / "ft" / "config.json").is_file()


def test_the_reported_top1_counts_the_classifiers_arg_max_on_the_scored_test_images(labelled_shapes, tmp_path):
    """The test split relabelled with the (seeded, untrained) classifier's own arg-max: its top-1 is exactly 1,
    whatever chance level the random head is at."""
    import shutil

    import timm
    import torch
    from datasets import load_dataset

    ckpt = tmp_path / "ckpt"
    tiny_checkpoint("simclr").save_pretrained(ckpt)
    _, trainer = untrained_finetune(ckpt, labelled_shapes, tmp_path / "ft", update_card=False)
    clf = timm.create_model(f"local-dir:{tmp_path / 'ft'}", pretrained=True).eval()
    test = trainer.eval_dataset
    with torch.no_grad():
        predicted = clf(torch.stack([test[i]["pixel_values"] for i in range(len(test))])).argmax(1)
    assert len(set(predicted.tolist())) > 1  # not one class for all: an arg-min would miss some
    folder = tmp_path / "relabelled"
    shutil.copytree(labelled_shapes, folder)
    load_dataset(labelled_shapes, split="test").map(lambda r, i: {"label": int(predicted[i])}, with_indices=True
                                                    ).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    (r,), _ = untrained_finetune(ckpt, str(folder), tmp_path / "ft2", evaluate=True, batch_size=8,
                                 update_card=False)
    assert r["value"] == 1.0


def test_the_eval_transform_is_the_standard_imagenet_crop_of_torchvisions_own_weights():
    """At 224 px the probes see what torchvision's ImageNet weights are evaluated on: the short side resized to
    256 (224 / 0.875), the centre 224 × 224 crop, ImageNet statistics."""
    import numpy as np
    from PIL import Image
    from torchvision.models import ResNet50_Weights

    from freeatm_hf.eval.frozen import eval_transform

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))
    got, want = eval_transform(224)(image), ResNet50_Weights.IMAGENET1K_V1.transforms()(image)
    assert got.shape == want.shape == (3, 224, 224)
    assert (got - want).abs().max().item() < 1.01 / 255 / 0.224  # one 8-bit level: PIL's rounding against torch's


def test_knn_alone_scores_the_test_split_and_leaves_the_card_alone_when_asked(labelled_shapes, tmp_path):
    from freeatm_hf.eval.frozen import evaluate_frozen

    tiny_checkpoint("simclr").save_pretrained(tmp_path)
    results = evaluate_frozen(str(tmp_path), labelled_shapes, image_size=32, k=5, batch_size=32, linear=False,
                              device="cpu", update_card=False)
    assert [(r["metric"], r["split"], r["dataset"]) for r in results] == [("knn5_top1", "test", labelled_shapes)]
    assert not (tmp_path / "eval_results.json").exists() and not (tmp_path / "README.md").exists()


def test_a_label_column_of_floats_is_refused_as_no_class_index(oblong_digits, tmp_path):
    """A regression target (or a score) in the label column would be cast to classes, 0.7 becoming class 0."""
    from datasets import load_dataset

    from freeatm_hf.eval.cli import main

    (tmp_path / "ds" / "data").mkdir(parents=True)
    for split in ("train", "test"):
        ds = load_dataset(oblong_digits, split=split)
        ds.map(lambda r: {"label": r["label"] + 0.5}).to_parquet(str(tmp_path / "ds" / "data" / f"{split}-0.parquet"))
    with pytest.raises(ValueError, match=r"column 'label' is Value\('float.*not a class index"):
        main(["knn", "--model", unread_checkpoint(tmp_path), "--dataset", str(tmp_path / "ds"), "--image_size", "32"])


def test_a_vits_own_size_wins_over_a_size_its_card_states(tmp_path):
    """Its position embeddings are fixed: a card saying otherwise (a dataset's size, say) cannot change the input."""
    from freeatm_hf.eval.frozen import checkpoint_image_size
    from freeatm_hf.hub.model_card import write_model_card

    model = tiny_checkpoint("mae")
    model.save_pretrained(tmp_path)
    write_model_card(tmp_path, model.config, data={"dataset": "me/scenes", "image_size": 48})
    assert checkpoint_image_size(str(tmp_path)) == model.config.image_size == 32


def test_an_image_column_of_file_paths_is_read_as_images(oblong_digits, tmp_path):
    """A JSON Lines (or CSV) dataset names its images by path: the splits come back decoding them."""
    import json

    import numpy as np
    from datasets import load_dataset

    from freeatm_hf.eval.frozen import labelled_splits

    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    for split in ("train", "test"):
        lines = []
        for i, row in enumerate(load_dataset(oblong_digits, split=split)):
            path = tmp_path / "files" / f"{split}-{i}.png"
            row["image"].save(path)
            lines.append(json.dumps({"image": str(path), "label": row["label"]}))
        (tmp_path / "ds" / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    splits = labelled_splits(str(tmp_path / "ds"), "train", "test", None, "image", "label")
    original = load_dataset(oblong_digits, split="test")
    assert [np.asarray(r["image"]).tolist() for r in splits["test"]] == [np.asarray(im).tolist()
                                                                         for im in original["image"]]


def test_more_neighbours_than_training_images_are_refused_before_any_feature_is_made(labelled_shapes, tmp_path,
                                                                                       monkeypatch):
    # 61 of 60 voted as 60, and the card said knn61 all the same.
    import freeatm_hf.eval.frozen as frozen

    monkeypatch.setattr(frozen, "extract_features", lambda *a, **k: pytest.fail("features were extracted"))
    tiny_checkpoint("simclr").save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=r"--k 61 is more neighbours than the 60 images of .* \[train\]: give --k 60 "
                                         r"or less"):
        frozen.evaluate_frozen(str(tmp_path / "ckpt"), labelled_shapes, image_size=32, k=61, device="cpu")


def test_class_names_are_classes_numbered_alike_in_both_splits(labelled_shapes, tmp_path):
    """A `metadata.csv`'s string labels: one numbering for both splits, the train split's names first (numbered per
    split, a class missing from the test split would shift every later one), scored as the same classes as
    indices; a test-only name is a class of its own, a row without a name unlabelled, mixed kinds refused."""
    from datasets import ClassLabel, load_dataset

    from freeatm_hf.eval.frozen import evaluate_frozen, labelled_splits
    from freeatm_hf.toy.world import SHAPES

    def write(name, edit):
        (tmp_path / name / "data").mkdir(parents=True)
        for split in ("train", "test"):
            ds = edit(split, load_dataset(labelled_shapes, split=split))
            ds.to_parquet(str(tmp_path / name / "data" / f"{split}-00000-of-00001.parquet"))
        return str(tmp_path / name)

    # The test split without the first shape present: its own numbering would differ from the train split's.
    # The reference numbers the classes as names sort (the numbering the names get), so that scores may be equal.
    train = load_dataset(labelled_shapes, split="train")
    first, order = train[0]["label"], sorted({SHAPES[i] for i in train["label"]})
    drop = {"test": lambda r: r["label"] != first, "train": lambda r: True}
    indices = write("indices", lambda s, d: d.filter(drop[s]).map(lambda r: {"label": order.index(SHAPES[r["label"]])})
                    .cast_column("label", ClassLabel(names=order)))
    named = write("named", lambda s, d: d.filter(drop[s]).map(lambda r: {"name": SHAPES[r["label"]]})
                  .remove_columns("label").rename_column("name", "label"))
    splits = labelled_splits(named, "train", "test", None, "image", "label")
    originals = {s: [order[i] for i in load_dataset(indices, split=s)["label"]] for s in splits}
    for s, d in splits.items():
        names = d.features["label"].names
        assert [names[i] for i in d["label"]] == originals[s]
    assert splits["train"].features == splits["test"].features
    tiny_checkpoint("simclr").save_pretrained(tmp_path / "ckpt")
    scores = [[r["value"] for r in evaluate_frozen(str(tmp_path / "ckpt"), folder, image_size=32, k=3, batch_size=32,
                                                   device="cpu", update_card=False)] for folder in (indices, named)]
    assert scores[0] == scores[1]

    unseen = write("unseen", lambda s, d: d.map(lambda r: {"name": "blob" if s == "test" else SHAPES[r["label"]]})
                   .remove_columns("label").rename_column("name", "label"))
    splits = labelled_splits(unseen, "train", "test", None, "image", "label")
    names = splits["test"].features["label"].names
    assert names[-1] == "blob" and set(splits["test"]["label"]) == {len(names) - 1}
    unnamed = write("unnamed", lambda s, d: d.map(lambda r, i: {"name": None if i % 3 == 0 else SHAPES[r["label"]]},
                                                  with_indices=True)
                    .remove_columns("label").rename_column("name", "label"))
    with pytest.raises(ValueError, match=r"\[train\] has 20 of 60 rows without a class"):
        labelled_splits(unnamed, "train", "test", None, "image", "label")
    # (A Parquet folder's splits share the train split's features; splits from elsewhere need not.)
    from datasets import Dataset

    from freeatm_hf.eval.frozen import _classes_by_name

    mixed = {"train": Dataset.from_dict({"label": [0, 1]}), "test": Dataset.from_dict({"label": ["star"]})}
    with pytest.raises(ValueError, match=r"one split's 'label' names classes, the other's numbers them"):
        _classes_by_name(mixed, "d", "train", "label")
