"""UperNet (transformers) on the checkpoint's timm backbone: weights carried over, image and label map aligned
through the augmentations, a 2-step fine-tune on rendered shapes scenes, a stock reload, results in the card."""

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def shapes_seg(tmp_path_factory):
    from freeatm_hf.toy.dataset import write_shapes_segmentation

    return write_shapes_segmentation(tmp_path_factory.mktemp("seg") / "shapes-seg", num_train=8, num_test=4)


def checkpoint():
    from tests.eval.test_frozen_eval import tiny_checkpoint

    return tiny_checkpoint("simclr").eval()


def test_upernet_backbone_carries_the_checkpoint_weights():
    from freeatm_hf.eval.segmentation import upernet_from_backbone

    model = checkpoint()
    seg = upernet_from_backbone(model, num_labels=7, hidden_size=32).eval()
    x = torch.randn(1, 3, 64, 64)
    # The last feature map of the UperNet backbone is the checkpoint's pre-pool feature map.
    feats = seg.backbone(x).feature_maps
    torch.testing.assert_close(feats[-1], model.backbone.forward_features(x), atol=1e-5, rtol=1e-5)
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512]
    assert seg(pixel_values=x).logits.shape == (1, 7, 64, 64)
    from freeatm_hf.models import MAEConfig, MAEModel
    from freeatm_hf.train.mae import SIZES

    with pytest.raises(ValueError, match=r"\(eval segment\) needs a CNN checkpoint \(SimCLR/MoCo\), not a MAEModel"):
        upernet_from_backbone(MAEModel(MAEConfig(image_size=32, patch_size=8, **SIZES["tiny"])), num_labels=7)


def test_label_map_follows_the_image_through_crop_and_flip():
    from PIL import Image

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.eval.segmentation import _transforms

    # An off-centre red block labelled 3 on grey labelled 0: flips and crops must move both alike.
    img = np.full((64, 64, 3), 128, np.uint8)
    lab = np.zeros((64, 64), np.uint8)
    img[8:30, 4:40] = (230, 20, 20)
    lab[8:30, 4:40] = 3
    train_tf, _ = _transforms(48, reduce_labels=False, num_labels=4)
    seen = 0
    for seed in range(12):
        torch.manual_seed(seed)
        x, y = train_tf(Image.fromarray(img), Image.fromarray(lab))
        assert x.shape == (3, 48, 48) and y.shape == (48, 48) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= {0, 3}
        red = (x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None])[0] > 0.7
        labelled = y == 3
        if labelled.any():
            seen += 1
            # Edges differ by resampling (bilinear image, nearest labels): a pixel at most.
            assert (red != labelled).float().mean() < 0.06
    assert seen >= 6


def test_a_training_crops_labels_lie_on_the_pixels_of_the_image_they_label():
    """Each column labelled by its own index and drawn in a red of that index: after a crop and resize, a pixel's
    label is the column under its centre, which the antialiased image there shows too. Plain nearest (torchvision's
    for a Mask) took the column at its top-left corner: a whole column off at a 3:1 downscale."""
    from PIL import Image

    from freeatm_hf.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from freeatm_hf.eval.segmentation import _transforms

    columns = np.tile(np.arange(48, dtype=np.uint8), (48, 1))
    img = np.stack([columns * 5, np.zeros_like(columns), np.zeros_like(columns)], -1)
    train_tf, _ = _transforms(16, reduce_labels=False, num_labels=48)
    for seed in range(6):
        torch.manual_seed(seed)
        x, y = train_tf(Image.fromarray(img), Image.fromarray(columns))
        red = (x[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]) * 255 / 5  # the column the image shows
        assert (y.float() - red).abs().max() < 0.75, seed


def test_two_step_finetune_gives_finite_miou_and_a_stock_upernet(shapes_seg, tmp_path, monkeypatch):
    import json

    from huggingface_hub import ModelCard
    from transformers import UperNetForSemanticSegmentation

    import freeatm_hf.eval.segmentation as segmentation
    from freeatm_hf.eval.cli import main
    from freeatm_hf.hub.model_card import write_model_card

    confusions = []
    predict = segmentation.predict_confusion
    monkeypatch.setattr(segmentation, "predict_confusion", lambda *a, **k: confusions.append(predict(*a, **k))
                        or confusions[-1])
    ckpt = tmp_path / "ckpt"
    model = checkpoint()
    model.save_pretrained(ckpt)
    write_model_card(ckpt, model.config)
    out = tmp_path / "seg"
    results = main(["segment", "--model", str(ckpt), "--dataset", str(shapes_seg), "--output_dir", str(out),
                    "--image_size", "64", "--max_steps", "2", "--batch_size", "4", "--device", "cpu"])
    values = {r["metric"]: r["value"] for r in results}
    assert set(values) == {"segmentation_miou", "segmentation_pixel_accuracy"}
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in values.values())
    # The numbers are the test confusion's: mean IoU over the classes present, and pixel accuracy.
    (c,) = [x.double() for x in confusions]
    inter, union = c.diag(), c.sum(0) + c.sum(1) - c.diag()
    assert values["segmentation_miou"] == pytest.approx(float((inter / union)[union > 0].mean()))
    assert values["segmentation_pixel_accuracy"] == pytest.approx(float(inter.sum() / c.sum()))
    seg = UperNetForSemanticSegmentation.from_pretrained(out)
    assert seg.config.num_labels == 7  # background + six shapes, read off the label maps
    stored = json.loads((ckpt / "eval_results.json").read_text())
    assert {r["metric"] for r in stored} == set(values)
    card = ModelCard.load(ckpt / "README.md")
    assert {e.metric_type for e in card.data.eval_results} == set(values)


def test_reduce_labels_ignores_background_and_keeps_void_pixels_void():
    from PIL import Image

    from freeatm_hf.eval.segmentation import _transforms

    lab = np.array([[0, 1, 255], [3, 255, 0]], np.uint8)
    _, eval_tf = _transforms(2, reduce_labels=True, num_labels=3)
    _, y = eval_tf(Image.new("RGB", (3, 2)), Image.fromarray(lab))
    # ADE-style: 0 → ignored, k → k − 1, and 255 (void) stays 255 rather than becoming class 254.
    assert y.tolist() == [[255, 0, 255], [2, 255, 255]]
    # A class the head has no output for is named, not left to a device-side assert in the loss.
    _, small_tf = _transforms(2, reduce_labels=True, num_labels=2)
    with pytest.raises(ValueError, match="holds class 2, but the head has num_labels=2"):
        small_tf(Image.new("RGB", (3, 2)), Image.fromarray(lab))


def num_labels_built(folder, monkeypatch, **kwargs) -> int:
    """The `num_labels` `finetune_segmentation` builds its head with (stopped there: nothing is trained)."""
    import transformers

    import freeatm_hf.eval.segmentation as segmentation

    class Built(Exception):
        pass

    def upernet(model, num_labels, *args, **kwargs):
        raise Built(num_labels)

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", lambda *a, **k: None)
    monkeypatch.setattr(segmentation, "upernet_from_backbone", upernet)
    with pytest.raises(Built) as built:
        segmentation.finetune_segmentation("unused", str(folder), str(folder / "out"), use_cpu=True, **kwargs)
    return built.value.args[0]


def write_splits(folder, train_rows, test_rows):
    from datasets import Dataset

    (folder / "data").mkdir(parents=True)
    for split, rows in (("train", train_rows), ("test", test_rows)):
        Dataset.from_list(rows).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


@pytest.mark.parametrize("reduce_labels,expected", [(False, 3), (True, 2)])
def test_num_labels_read_off_the_label_maps_leave_the_void_index_out(reduce_labels, expected, tmp_path, monkeypatch):
    from PIL import Image

    import freeatm_hf.eval.segmentation as segmentation

    rows = []
    for i in range(3):
        lab = np.zeros((16, 16), np.uint8)
        lab[:8], lab[12:, :4 * i] = 1, 2
        lab[:, :2] = 255  # a void border, as VOC draws around objects
        rows.append({"image": Image.new("RGB", (16, 16)), "annotation": Image.fromarray(lab)})
    folder = write_splits(tmp_path / "seg", rows, rows)
    # Classes {0, 1, 2} (255 is void, not class 255); with reduce_labels 0 is ignored too: {1, 2} → {0, 1}.
    assert num_labels_built(folder, monkeypatch, reduce_labels=reduce_labels) == expected
    with pytest.raises(ValueError, match="hold no class"):
        segmentation.count_labels([np.full((4, 4), 255, np.uint8)])


def test_label_maps_named_by_path_are_read_as_images_as_the_images_are(tmp_path, monkeypatch):
    """A JSON Lines (or CSV) dataset names its label maps by path, as its images: they were read as strings, and
    counting their classes crashed in numpy ("ufunc 'maximum' did not contain a loop")."""
    import json

    from PIL import Image

    (tmp_path / "ds" / "data").mkdir(parents=True)
    (tmp_path / "files").mkdir()
    for split in ("train", "test"):
        lines = []
        for i in range(3):
            lab = np.zeros((8, 8), np.uint8)
            lab[:4], lab[6:, :2] = 1, 2 if split == "train" else 1
            paths = tmp_path / "files" / f"{split}-{i}.png", tmp_path / "files" / f"{split}-{i}-seg.png"
            Image.new("RGB", (8, 8)).save(paths[0])
            Image.fromarray(lab).save(paths[1])
            lines.append(json.dumps({"image": str(paths[0]), "annotation": str(paths[1])}))
        (tmp_path / "ds" / "data" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    assert num_labels_built(tmp_path / "ds", monkeypatch) == 3


@pytest.mark.parametrize("split", ["train", "test"])
def test_rows_without_a_label_map_are_refused_naming_the_split(split, tmp_path, monkeypatch):
    """scene_parse_150's test split has no label maps (None), and `--test_split test` is the default: counting its
    classes crashed in `int(None)`."""
    from datasets import Dataset, Features, Image
    from PIL import Image as PILImage

    folder = tmp_path / "seg"
    (folder / "data").mkdir(parents=True)
    features = Features({"image": Image(), "annotation": Image()})
    labelled = {"image": PILImage.new("RGB", (4, 4)), "annotation": PILImage.fromarray(np.ones((4, 4), np.uint8))}
    for s in ("train", "test"):
        rows = [labelled, {**labelled, "annotation": None}, {**labelled, "annotation": None}] if s == split else [
            labelled]
        Dataset.from_list(rows, features=features).to_parquet(str(folder / "data" / f"{s}-00000-of-00001.parquet"))
    with pytest.raises(ValueError, match=rf"\[{split}\] has 2 of \d rows without a label map \('annotation' is "
                                         "null\): evaluate on a labelled split"):
        num_labels_built(folder, monkeypatch)


@pytest.mark.parametrize("reduce_labels", [False, True])
def test_label_maps_of_a_single_class_are_refused_not_scored_miou_one(reduce_labels, tmp_path, monkeypatch):
    """Binary masks drawn 0/255 (object pixels 255, the void index): every object pixel was ignored, the head got
    one class, and the test mIoU, background alone, came out 1.0 for any model."""
    from PIL import Image

    rows = []
    for i in range(3):
        lab = np.zeros((8, 8), np.uint8)
        lab[2:6, i:i + 4] = 255
        if reduce_labels:  # ADE-style 0 ignored: one class left once shifted
            lab[lab == 0] = 1
        rows.append({"image": Image.new("RGB", (8, 8)), "annotation": Image.fromarray(lab)})
    folder = write_splits(tmp_path / "seg", rows, rows[:2])
    with pytest.raises(ValueError, match=r"the label maps hold a single class \(0\): there is nothing to segment; "
                                         r"255 is the void index"):
        num_labels_built(folder, monkeypatch, reduce_labels=reduce_labels)
    with pytest.raises(ValueError, match="a single class"):
        num_labels_built(folder, monkeypatch, reduce_labels=reduce_labels, num_labels=1)


def test_num_labels_counts_every_label_map_and_splits_must_differ(tmp_path, monkeypatch):
    """A class first seen past the 200th map still gets an output; training on the test split is refused."""
    from PIL import Image

    rows = [{"image": Image.new("RGB", (4, 4)), "annotation": Image.fromarray(np.full((4, 4), i % 3, np.uint8))}
            for i in range(260)]
    rows[250]["annotation"] = Image.fromarray(np.full((4, 4), 7, np.uint8))
    folder = write_splits(tmp_path / "seg", rows, rows[:2])
    assert num_labels_built(folder, monkeypatch) == 8
    with pytest.raises(ValueError, match="train_split and test_split are both 'train'"):
        num_labels_built(folder, monkeypatch, test_split="train")


def test_a_test_class_the_training_maps_lack_is_found_before_training(tmp_path, monkeypatch):
    """Found only when scoring, it crashed the run after all its training."""
    from PIL import Image

    rows = [{"image": Image.new("RGB", (4, 4)), "annotation": Image.fromarray(np.full((4, 4), i % 3, np.uint8))}
            for i in range(3)]
    test = [{"image": Image.new("RGB", (4, 4)), "annotation": Image.fromarray(np.full((4, 4), 5, np.uint8))}]
    folder = write_splits(tmp_path / "seg", rows, test)
    # Read off the maps: an output for it too (never trained, it scores IoU 0, as the test split holds it).
    assert num_labels_built(folder, monkeypatch) == 6
    with pytest.raises(ValueError, match=r"a test label map holds class 5, but the head has num_labels=3"):
        num_labels_built(folder, monkeypatch, num_labels=3)
    assert num_labels_built(folder, monkeypatch, num_labels=6) == 6


def test_test_confusion_sums_every_images_upsampled_arg_max_against_its_labels():
    """`predict_confusion`: logits bilinearly upsampled to each label map's own size, arg-max per pixel, counted
    against the reference (void pixels skipped) and summed over all images, batch by batch."""
    from types import SimpleNamespace

    from freeatm_hf.eval.segmentation import IGNORE_INDEX, predict_confusion

    class GivenLogits(torch.nn.Module):  # the pixel values are the logits
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, pixel_values):
            return SimpleNamespace(logits=pixel_values)

    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(3):
        labels = torch.randint(0, 3, (8, 8), generator=g)
        labels[0, :3] = IGNORE_INDEX
        rows.append({"pixel_values": torch.randn(3, 4, 4, generator=g), "labels": labels})
    got = predict_confusion(GivenLogits(), rows, num_labels=3, batch_size=2)
    expected = torch.zeros(3, 3, dtype=torch.long)
    for r in rows:
        up = torch.nn.functional.interpolate(r["pixel_values"][None], size=(8, 8), mode="bilinear", align_corners=False)
        pred = up[0].argmax(0)
        for y in range(8):
            for x in range(8):
                if r["labels"][y, x] != IGNORE_INDEX:
                    expected[r["labels"][y, x], pred[y, x]] += 1
    assert expected.sum() == 3 * (64 - 3)
    assert torch.equal(got, expected)
    nearest = torch.nn.functional.interpolate(rows[0]["pixel_values"][None], size=(8, 8), mode="nearest")[0].argmax(0)
    assert not torch.equal(nearest, torch.nn.functional.interpolate(rows[0]["pixel_values"][None], size=(8, 8),
                                                                    mode="bilinear")[0].argmax(0))


def test_a_prediction_outside_the_classes_is_refused_even_where_the_reference_is_valid():
    """Only the reference's void pixels are skipped; a predicted label no class has is an error, not a pixel
    dropped from the counts."""
    from freeatm_hf.eval.segmentation import IGNORE_INDEX, confusion_matrix

    with pytest.raises(ValueError, match="labels must lie"):
        confusion_matrix(np.array([[IGNORE_INDEX, 0]]), np.array([[1, 0]]), 3)


def untrained_segmentation(model_dir, dataset, output_dir, save=True, **kwargs):
    """`finetune_segmentation` with Trainer's training (and unless `save`, its saving) stubbed out and the test
    confusion left to a recorder (seconds, not minutes): the UperNet as built and what was scored come back."""
    import transformers

    import freeatm_hf.eval.segmentation as segmentation

    seen = {}

    def confusion(model, dataset, num_labels, **kwargs):
        seen["scored"] = dataset
        return torch.eye(num_labels, dtype=torch.long)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.Trainer, "train", lambda self, *a, **k: seen.setdefault("model", self.model))
        if not save:
            mp.setattr(transformers.Trainer, "save_model", lambda self, *a, **k: None)
        mp.setattr(segmentation, "predict_confusion", confusion)
        results = segmentation.finetune_segmentation(str(model_dir), str(dataset), str(output_dir), use_cpu=True,
                                                     image_size=32, **kwargs)
    return results, seen


def test_the_new_heads_start_is_the_seeds_whatever_was_drawn_before(shapes_seg, tmp_path):
    """Trainer seeds only once the model exists: UperNet's heads must be drawn after `finetune_segmentation`
    seeds. Scored on the test split, the card left alone when asked."""
    ckpt = tmp_path / "ckpt"
    checkpoint().save_pretrained(ckpt)
    heads = []
    for before in (1, 2):
        torch.manual_seed(before)
        results, seen = untrained_segmentation(ckpt, shapes_seg, tmp_path / "seg", save=False, update_card=False)
        heads.append({k: v for k, v in seen["model"].state_dict().items() if k.startswith("decode_head.")})
    assert heads[0] and all(torch.equal(v, heads[1][k]) for k, v in heads[0].items())
    assert len(seen["scored"]) == 4 and {r["split"] for r in results} == {"test"}
    assert not (ckpt / "eval_results.json").exists()


def test_only_the_main_process_scores_and_writes_the_card(shapes_seg, tmp_path, monkeypatch):
    """Under `accelerate launch` every process trains; the others writing the card at the same time would race
    the main one, and scoring the test split again on each would only waste their time."""
    import transformers

    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 1))  # rank 1 of 2
    ckpt = tmp_path / "ckpt"
    checkpoint().save_pretrained(ckpt)
    results, seen = untrained_segmentation(ckpt, shapes_seg, tmp_path / "seg")
    assert results == [] and "scored" not in seen
    assert not (tmp_path / "seg" / "model.safetensors").exists() and not (ckpt / "eval_results.json").exists()


def test_a_backbone_with_a_classifier_head_gives_its_feature_maps_and_drops_the_head():
    """A timm CNN may carry an `fc` classifier the feature extractor has no place for: left out."""
    from freeatm_hf.eval.segmentation import upernet_from_backbone

    model = checkpoint()
    model.backbone.fc = torch.nn.Linear(model.backbone.num_features, 10)
    seg = upernet_from_backbone(model, num_labels=3, hidden_size=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(seg.backbone(x).feature_maps[-1], model.backbone.forward_features(x))


def test_test_images_are_squashed_to_the_side_and_their_label_maps_kept_at_full_size():
    """The model sees image_size × image_size (what batching needs, whatever the aspect ratio); the mIoU is
    counted at each label map's own resolution."""
    from PIL import Image

    from freeatm_hf.eval.segmentation import _transforms

    _, test_tf = _transforms(32, reduce_labels=False, num_labels=3)
    x, y = test_tf(Image.new("RGB", (60, 40)), Image.fromarray(np.ones((40, 60), np.uint8)))
    assert x.shape == (3, 32, 32) and y.shape == (40, 60)


def test_a_label_map_of_another_size_than_its_image_is_named():
    """Test maps were counted at their own size against a prediction stretched onto them (a silently wrong mIoU);
    training said only torchvision's "Found multiple HxW dimensions". An EXIF-rotated photo, which `datasets`
    reads upright, with a map drawn on the stored pixels is the usual cause, and is named as such."""
    import io

    from datasets import Image as ImageFeature
    from PIL import Image

    from freeatm_hf.eval.segmentation import _transforms

    train_tf, test_tf = _transforms(16, reduce_labels=False, num_labels=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    raw = io.BytesIO()
    Image.new("RGB", (60, 40)).save(raw, "JPEG", exif=exif)
    photo = ImageFeature().decode_example({"bytes": raw.getvalue(), "path": None})
    assert photo.size == (40, 60)  # upright, as datasets reads it
    stored = Image.fromarray(np.ones((40, 60), np.uint8))  # drawn on the stored 60x40 pixels
    for tf in (train_tf, test_tf):
        with pytest.raises(ValueError, match=r"image is 40x60 but its label map is 60x40 \(turned by 90°: a JPEG"):
            tf(photo, stored)
    with pytest.raises(ValueError, match=r"an image is 60x40 but its label map is 30x20: each label map must"):
        test_tf(Image.new("RGB", (60, 40)), Image.fromarray(np.ones((20, 30), np.uint8)))
    x, y = test_tf(photo, Image.fromarray(np.ones((60, 40), np.uint8)))
    assert x.shape == (3, 16, 16) and y.shape == (60, 40)
