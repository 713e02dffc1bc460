"""Mask R-CNN (torchvision) from the checkpoint's ResNet: the COCO AP library against hand cases, weights
carried over, a 2-step fine-tune on rendered shapes scenes in COCO layout, results in the card."""

import json

import numpy as np
import pytest
import torch


def box_mask(x0, y0, x1, y1, size=32):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def test_coco_ap_library_on_hand_cases():
    from torchmetrics.detection import MeanAveragePrecision

    ref = {"boxes": torch.tensor([[4.0, 4.0, 14.0, 14.0]]), "labels": torch.tensor([1]),
           "masks": box_mask(4, 4, 14, 14)[None]}
    # Perfect: AP 1. Shifted right by 3 px: IoU = 70 / 130 ≈ 0.54 → a hit at 0.5, a miss from 0.55 up.
    for dx, ap, ap50, ap75 in ((0, 1.0, 1.0, 1.0), (3, 0.1, 1.0, 0.0)):
        pred = {"boxes": ref["boxes"] + torch.tensor([dx, 0.0, dx, 0.0]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1]), "masks": box_mask(4 + dx, 4, 14 + dx, 14)[None]}
        m = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools")
        m.update([pred], [ref])
        r = m.compute()
        for kind in ("bbox", "segm"):
            assert float(r[f"{kind}_map"]) == pytest.approx(ap, abs=1e-3)
            assert float(r[f"{kind}_map_50"]) == pytest.approx(ap50)
            assert float(r[f"{kind}_map_75"]) == pytest.approx(ap75)


def checkpoint():
    from tests.eval.test_frozen_eval import tiny_checkpoint

    return tiny_checkpoint("simclr").eval()


def test_maskrcnn_body_carries_the_checkpoint_weights():
    from freeatm_hf.eval.detection import maskrcnn_from_backbone

    model = checkpoint()
    det = maskrcnn_from_backbone(model, num_classes=6, min_size=64, max_size=64).eval()
    body = det.backbone.body
    x = torch.randn(1, 3, 64, 64)
    # Frozen BN in eval mode computes what the checkpoint's BN computes in eval mode.
    torch.testing.assert_close(body(x)["3"], model.backbone.forward_features(x), atol=1e-4, rtol=1e-4)
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    with pytest.raises(ValueError, match=r"ResNet-family CNN checkpoint, got a MAEModel \(no CNN backbone\)"):
        from freeatm_hf.models import MAEConfig, MAEModel
        from freeatm_hf.train.mae import SIZES

        maskrcnn_from_backbone(MAEModel(MAEConfig(image_size=32, patch_size=8, **SIZES["tiny"])), 6)


@pytest.fixture(scope="module")
def shapes_coco(tmp_path_factory):
    from freeatm_hf.toy.dataset import write_shapes_coco

    return write_shapes_coco(tmp_path_factory.mktemp("coco") / "shapes-coco", num_train=6, num_test=3)


def test_coco_folder_round_trips_masks_and_boxes(shapes_coco):
    from freeatm_hf.eval.detection import coco_split
    from freeatm_hf.toy.world import SHAPES, ShapesWorld

    ds = coco_split(shapes_coco, "test", train=False)
    world = ShapesWorld(seed=1)  # the test split's world
    specs = world.scenes(3)
    _, masks = world.render(specs)
    for i in range(3):
        image, target = ds[i]
        assert image.shape == (3, 64, 64) and image.dtype == torch.float32
        visible = [k for k in range(len(specs[i].objects)) if masks[i][k].any()]
        assert target["labels"].tolist() == [1 + SHAPES.index(specs[i].objects[k].shape) for k in visible]
        assert torch.equal(target["masks"].bool(), masks[i][visible])


@pytest.fixture
def renumbered_with_a_crowd(shapes_coco, tmp_path):
    """The shapes COCO folder with categories numbered from 0 (as many exports do) and, in each split, the
    first image's first annotation turned into a crowd region."""
    import shutil

    folder = tmp_path / "coco0"
    shutil.copytree(shapes_coco, folder)
    for split in ("train", "test"):
        path = folder / "annotations" / f"{split}.json"
        coco = json.loads(path.read_text())
        for c in coco["categories"]:
            c["id"] -= 1
        for a in coco["annotations"]:
            a["category_id"] -= 1
        first = next(a for a in coco["annotations"] if a["image_id"] == coco["images"][0]["id"])
        first["iscrowd"] = 1
        path.write_text(json.dumps(coco))
    return folder


class _Oracle(torch.nn.Module):
    """A detector that returns, in order, given outputs."""

    def __init__(self, outputs):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.outputs = list(outputs)

    def forward(self, images):
        return [self.outputs.pop(0) for _ in images]


def test_coco_ap_reads_recall_on_cocoevals_own_grid_where_seven_of_ten_objects_are_found():
    from pycocotools.cocoeval import Params

    from freeatm_hf.eval.detection import coco_ap

    # Ten separate squares, seven found exactly: precision 1 up to recall 0.7. COCOeval's recall grid is float64
    # linspace, whose 0.70 lies just above 7/10, so AP = 70 of its 101 points; torchmetrics' own float32 grid puts
    # 0.70 just below 7/10 and counts a 71st point.
    assert Params().recThrs[70] > 7 / 10 > float(np.float32(0.7))
    boxes = torch.tensor([[10.0 * i, 0, 10 * i + 8, 8] for i in range(10)])
    masks = torch.stack([box_mask(10 * i, 0, 10 * i + 8, 8, size=100)[:32] for i in range(10)]).to(torch.uint8)
    row = (torch.zeros(3, 32, 100), {"boxes": boxes, "labels": torch.full((10,), 4), "masks": masks,
                                     "iscrowd": [0] * 10})
    found = {"boxes": boxes[:7], "labels": torch.ones(7, dtype=torch.int64),
             "scores": torch.linspace(0.9, 0.3, 7), "masks": masks[:7, None].float()}
    ap = coco_ap(_Oracle([found]), [row], categories=[4])
    assert ap == {f"{kind}_{name}": pytest.approx(70 / 101) for kind in ("box", "mask")
                  for name in ("map", "map_50", "map_75")}


def test_category_zero_gets_its_own_label_and_crowds_are_ignored(shapes_coco, renumbered_with_a_crowd):
    from freeatm_hf.eval.detection import category_ids, coco_ap, coco_split, collate

    train = coco_split(renumbered_with_a_crowd, "train", train=False)
    categories = category_ids(train)
    assert categories == list(range(6))
    original = coco_split(shapes_coco, "train", train=False)
    (_, t0), (_, t) = original[0], train[0]
    assert t["iscrowd"][0] == 1  # the v2 wrapper gives the flags as a list
    kept = collate([train[0]], categories)["targets"][0]  # training: the crowd is left out
    assert "iscrowd" not in kept
    assert kept["labels"].tolist() == t0["labels"].tolist()[1:]  # ids 0..5 → labels 1..6, as the 1-based folder
    torch.testing.assert_close(kept["masks"], t0["masks"][1:])
    assert kept["labels"].min() >= 1  # 0 is Mask R-CNN's background

    test = coco_split(renumbered_with_a_crowd, "test", train=False)
    targets = collate([test[i] for i in range(len(test))], categories, drop_crowd=False)["targets"]
    assert targets[0]["iscrowd"].tolist()[0] == 1
    # Every object but the crowd found exactly: AP 1 by COCOeval, which ignores the crowd region.
    outputs = [{"boxes": t["boxes"][t["iscrowd"] == 0], "labels": t["labels"][t["iscrowd"] == 0],
                "scores": torch.ones(int((t["iscrowd"] == 0).sum())),
                "masks": t["masks"][t["iscrowd"] == 0][:, None].float()} for t in targets]
    ap = coco_ap(_Oracle(outputs), test, batch_size=2, categories=categories)
    assert ap["box_map"] == pytest.approx(1.0) and ap["mask_map"] == pytest.approx(1.0)


def test_two_step_finetune_gives_finite_ap_in_the_card(shapes_coco, tmp_path):
    from huggingface_hub import ModelCard

    from freeatm_hf.eval.cli import main
    from freeatm_hf.hub.model_card import write_model_card

    ckpt = tmp_path / "ckpt"
    model = checkpoint()
    model.save_pretrained(ckpt)
    write_model_card(ckpt, model.config)
    out = tmp_path / "det"
    results = main(["detect", "--model", str(ckpt), "--dataset", str(shapes_coco), "--output_dir", str(out),
                    "--max_steps", "2", "--batch_size", "2", "--min_size", "64", "--max_size", "64",
                    "--device", "cpu"])
    values = {r["metric"]: r["value"] for r in results}
    assert set(values) == {f"{k}_{n}" for k in ("box", "mask") for n in ("map", "map_50", "map_75")}
    assert all(np.isfinite(v) and -1 <= v <= 1 for v in values.values())  # -1: torchmetrics' "no detections"
    assert (out / "maskrcnn.pth").is_file()
    assert json.loads((out / "coco_ap.json").read_text()) == values
    from freeatm_hf.toy.world import SHAPES

    # The detector's label k (1..K) is the k-th category, 0 being the background.
    assert json.loads((out / "categories.json").read_text()) == {
        str(k + 1): {"category_id": k + 1, "name": name} for k, name in enumerate(SHAPES)}
    card = ModelCard.load(ckpt / "README.md")
    assert {e.metric_type for e in card.data.eval_results} >= set(values)


def test_maskrcnn_counts_the_background_class_takes_the_sizes_and_refuses_weights_that_do_not_fit():
    from freeatm_hf.eval.detection import maskrcnn_from_backbone

    det = maskrcnn_from_backbone(checkpoint(), num_classes=6, min_size=64, max_size=96)
    assert det.roi_heads.box_predictor.cls_score.out_features == 7  # 6 classes + background
    assert det.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 7
    assert (det.transform.min_size, det.transform.max_size) == ((64,), 96)
    for change in (lambda b: setattr(b, "layer4", torch.nn.Identity()),  # weights missing
                   lambda b: b.add_module("extra", torch.nn.Linear(2, 2))):  # weights it has no place for
        model = checkpoint()
        change(model.backbone)
        with pytest.raises(ValueError, match="backbone weights do not fit torchvision's resnet18"):
            maskrcnn_from_backbone(model, num_classes=6)


def test_the_training_loss_is_the_sum_of_the_detectors_losses():
    from freeatm_hf.eval.detection import DetectionLoss

    class Fake(torch.nn.Module):
        def forward(self, images, targets):
            return {"loss_classifier": torch.tensor(1.0), "loss_box_reg": torch.tensor(2.0),
                    "loss_mask": torch.tensor(0.5), "loss_objectness": torch.tensor(0.25)}

    assert DetectionLoss(Fake())([], [])["loss"].item() == pytest.approx(3.75)


def test_category_ids_are_sorted_and_unknown_or_missing_categories_are_refused():
    from types import SimpleNamespace

    from freeatm_hf.eval.detection import category_ids, collate

    ds = SimpleNamespace(coco=SimpleNamespace(dataset={"categories": [{"id": 7}, {"id": 2}, {"id": 5}]}))
    assert category_ids(ds) == [2, 5, 7]
    with pytest.raises(ValueError, match="list no categories"):
        category_ids(SimpleNamespace(coco=SimpleNamespace(dataset={"categories": []})))
    row = (torch.zeros(3, 8, 8), {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 5, 5]]), "labels": torch.tensor([7, 3]),
                                  "masks": torch.zeros(2, 8, 8, dtype=torch.uint8), "iscrowd": [0, 0]})
    with pytest.raises(ValueError, match=r"category ids \[3\] that the categories list lacks"):
        collate([row], [2, 5, 7])


def test_coco_ap_is_torchmetrics_on_the_thresholded_masks_and_a_detection_on_a_crowd_is_no_false_positive(
        shapes_coco, renumbered_with_a_crowd):
    from pycocotools.cocoeval import Params
    from torchmetrics.detection import MeanAveragePrecision

    from freeatm_hf.eval.detection import category_ids, coco_ap, coco_split, collate

    test = coco_split(shapes_coco, "test", train=False)
    categories = category_ids(test)
    targets = collate([test[i] for i in range(len(test))], categories, drop_crowd=False)["targets"]
    # Boxes shifted by 3 px (AP50 ≠ AP75), soft masks: 0.6 inside the object, 0.4 in a ring a pixel wide.
    outputs, preds = [], []
    for t in targets:
        n = len(t["labels"])
        grown = torch.nn.functional.max_pool2d(t["masks"][:, None].float(), 3, 1, 1)[:, 0] > 0
        soft = torch.where(t["masks"].bool(), 0.6, torch.where(grown, 0.4, 0.0))
        boxes = t["boxes"] + torch.tensor([3.0, 0, 3, 0])
        scores = torch.linspace(1.0, 0.5, n)
        outputs.append({"boxes": boxes, "labels": t["labels"], "scores": scores, "masks": soft[:, None]})
        preds.append({"boxes": boxes, "labels": t["labels"], "scores": scores, "masks": soft > 0.5})
    ap = coco_ap(_Oracle(outputs), test, batch_size=2, categories=categories)
    coco = Params()  # COCOeval's own grids (see the test above): shifted whole-pixel boxes meet IoUs such as 0.6
    ref = MeanAveragePrecision(iou_type=("bbox", "segm"), backend="pycocotools", iou_thresholds=coco.iouThrs.tolist(),
                               rec_thresholds=coco.recThrs.tolist())
    ref.update(preds, [{k: t[k] for k in ("boxes", "labels", "iscrowd")} | {"masks": t["masks"].bool()}
                       for t in targets])
    r = ref.compute()
    assert ap == {f"{kind}_{name}": pytest.approx(float(r[f"{prefix}_{name}"]))
                  for kind, prefix in (("box", "bbox"), ("mask", "segm")) for name in ("map", "map_50", "map_75")}
    assert ap["box_map_50"] != ap["box_map_75"] and ap["box_map"] != ap["mask_map"]
    # Every object found, and the crowd region detected first too: COCOeval ignores a detection matched to a crowd.
    crowd_test = coco_split(renumbered_with_a_crowd, "test", train=False)
    categories = category_ids(crowd_test)
    targets = collate([crowd_test[i] for i in range(len(crowd_test))], categories, drop_crowd=False)["targets"]
    outputs = [{"boxes": t["boxes"], "labels": t["labels"], "scores": 0.5 + 0.5 * t["iscrowd"].float(),
                "masks": t["masks"][:, None].float()} for t in targets]
    ap = coco_ap(_Oracle(outputs), crowd_test, batch_size=2, categories=categories)
    assert ap["box_map"] == pytest.approx(1.0) and ap["mask_map"] == pytest.approx(1.0)


def test_detection_finetuning_refuses_mismatched_splits_before_training(shapes_coco, tmp_path):
    import shutil

    from freeatm_hf.eval.detection import coco_split, finetune_detection

    with pytest.raises(ValueError, match="train_split and test_split are both 'train'"):
        finetune_detection("unused", str(shapes_coco), str(tmp_path / "o"), test_split="train")
    folder = tmp_path / "other"
    shutil.copytree(shapes_coco, folder)
    path = folder / "annotations" / "test.json"
    coco = json.loads(path.read_text())
    coco["categories"] = coco["categories"][:-1]
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="train and test list different categories"):
        finetune_detection("unused", str(folder), str(tmp_path / "o"))
    shutil.rmtree(folder / "images" / "test")
    with pytest.raises(FileNotFoundError, match="a COCO-style folder needs"):
        coco_split(folder, "test", train=False)


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_annotation_of_an_unlisted_category_is_refused_before_training(split, shapes_coco, tmp_path):
    """Found by the collate, it ended the run when a batch drew it, or, in the test split, after the whole
    fine-tune, when scoring."""
    import shutil

    from freeatm_hf.eval.detection import finetune_detection

    folder = tmp_path / "unlisted"
    shutil.copytree(shapes_coco, folder)
    path = folder / "annotations" / f"{split}.json"
    coco = json.loads(path.read_text())
    coco["annotations"][-1]["category_id"] = 99
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=rf"\[{split}\]: 1 annotation\(s\) use category ids \[99\] that the "
                                         "categories list lacks"):
        finetune_detection("unused", str(folder), str(tmp_path / "o"))


@pytest.mark.parametrize("kept", ["none", "crowds"])
def test_a_test_split_without_an_object_to_find_is_refused_before_training(kept, shapes_coco, tmp_path):
    """COCO's test-dev annotations list images alone: COCOeval scores such a split -1, which went into the card
    as its AP after the whole fine-tune."""
    import shutil

    from freeatm_hf.eval.detection import finetune_detection

    folder = tmp_path / "unannotated"
    shutil.copytree(shapes_coco, folder)
    path = folder / "annotations" / "test.json"
    coco = json.loads(path.read_text())
    coco["annotations"] = [] if kept == "none" else [{**a, "iscrowd": 1} for a in coco["annotations"]]
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"the test split of .* has no object to find \(\d+ images, 0 annotations "
                                         r"that are not crowd regions\): AP is undefined"):
        finetune_detection("unused", str(folder), str(tmp_path / "o"))


def test_training_views_flip_image_boxes_and_masks_together_and_the_trainable_stages_are_the_argument(shapes_coco):
    from freeatm_hf.eval.detection import coco_split, maskrcnn_from_backbone

    plain, flipping = coco_split(shapes_coco, "train", train=False), coco_split(shapes_coco, "train", train=True)
    image, target = plain[0]
    w, boxes = image.shape[-1], target["boxes"].as_subclass(torch.Tensor)  # XYXY
    mirrored = boxes[:, [2, 1, 0, 3]] * torch.tensor([-1.0, 1, -1, 1]) + torch.tensor([w, 0.0, w, 0])
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        got, t = flipping[0]
        flipped = not torch.equal(got, image)
        seen.add(flipped)
        assert torch.equal(got, image.flip(-1) if flipped else image)
        torch.testing.assert_close(t["boxes"].as_subclass(torch.Tensor), mirrored if flipped else boxes)
        assert torch.equal(t["masks"], target["masks"].flip(-1) if flipped else target["masks"])
        assert t["labels"].tolist() == target["labels"].tolist()
    assert seen == {False, True}
    # torchvision's trainable_layers: the last k of conv1, layer1..layer4 train, the rest stay frozen.
    for k, stages in ((1, {"layer4"}), (5, {"conv1", "layer1", "layer2", "layer3", "layer4"})):
        body = maskrcnn_from_backbone(checkpoint(), num_classes=6, trainable_layers=k).backbone.body
        assert {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad} == stages


def test_a_backbone_with_a_classifier_head_gives_its_resnet_and_drops_the_head():
    """timm and torchvision ResNets carry an `fc` classifier that the FPN body has no place for: left out."""
    from freeatm_hf.eval.detection import maskrcnn_from_backbone

    model = checkpoint()
    model.backbone.fc = torch.nn.Linear(model.backbone.num_features, 10)
    body = maskrcnn_from_backbone(model, num_classes=6).backbone.body
    assert not any(k.startswith("fc.") for k in body.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(body.eval()(x)["3"], model.backbone.forward_features(x), atol=1e-4, rtol=1e-4)


def test_an_image_without_annotations_gives_empty_targets_that_mask_rcnn_trains_on():
    from freeatm_hf.eval.detection import collate, maskrcnn_from_backbone

    image = torch.rand(3, 64, 48)
    target = collate([(image, {"image_id": 3})], [1, 2])["targets"][0]  # what the v2 wrapper gives: no boxes
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["masks"].shape == (0, 64, 48)
    torch.manual_seed(0)
    det = maskrcnn_from_backbone(checkpoint(), num_classes=2, min_size=64, max_size=64).train()
    losses = det([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.slow
def test_a_finetune_is_its_seed_and_trains_only_the_stages_asked(shapes_coco, tmp_path):
    """The new heads are drawn after seeding (the same seed: the same detector, whatever was drawn before), and
    `trainable_layers` reaches the detector: with 1 only layer4 of the checkpoint's ResNet moves."""
    from freeatm_hf.eval.detection import finetune_detection

    ckpt = tmp_path / "ckpt"
    model = checkpoint()
    model.save_pretrained(ckpt)
    states = []
    for before in (1, 2):
        torch.manual_seed(before)
        out = tmp_path / f"det{before}"
        finetune_detection(str(ckpt), str(shapes_coco), str(out), max_steps=2, batch_size=2, min_size=64, max_size=64,
                           trainable_layers=1, use_cpu=True, update_card=False, learning_rate=0.1)
        states.append(torch.load(out / "maskrcnn.pth"))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    body = {k[len("backbone.body."):]: v for k, v in states[0].items() if k.startswith("backbone.body.")}
    pretrained = model.backbone.state_dict()
    moved = {k.split(".")[0] for k, v in body.items() if k in pretrained and not torch.equal(v, pretrained[k])}
    assert moved == {"layer4"}


def untrained_detection(model_dir, dataset, output_dir, **kwargs):
    """`finetune_detection` with Trainer's training stubbed out and the AP left to a recorder (seconds, not
    minutes): what was built, trained with and scored comes back."""
    import transformers

    import freeatm_hf.eval.detection as detection

    seen = {}

    def ap(detector, dataset, **kw):
        seen["scored"] = (detector, dataset)
        return {f"{kind}_{n}": 0.25 for kind in ("box", "mask") for n in ("map", "map_50", "map_75")}

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transformers.Trainer, "train", lambda self, *a, **k: seen.setdefault("trainer", self))
        mp.setattr(detection, "coco_ap", ap)
        results = detection.finetune_detection(str(model_dir), str(dataset), str(output_dir), use_cpu=True, **kwargs)
    return results, seen


def test_the_detector_takes_the_sizes_given_trains_by_sgd_with_momentum_and_is_scored_on_the_test_split(
        shapes_coco, tmp_path):
    ckpt = tmp_path / "ckpt"
    checkpoint().save_pretrained(ckpt)
    results, seen = untrained_detection(ckpt, shapes_coco, tmp_path / "det", min_size=64, max_size=96,
                                        learning_rate=0.01, update_card=False)
    detector, scored = seen["scored"]
    assert len(scored) == 3  # the test split's images, not the 6 it trained on
    assert {r["split"] for r in results} == {"test"}
    assert not (ckpt / "eval_results.json").exists()  # update_card=False
    # Mask R-CNN's resize: the short side to min_size, unless the long side would pass max_size.
    batch, _ = detector.eval().transform([torch.rand(3, 32, 32), torch.rand(3, 20, 80)])
    assert batch.image_sizes == [(64, 64), (24, 96)]
    # detectron's optimiser: SGD, momentum 0.9, weight decay 1e-4 on the weights (not on biases or norms).
    optimizer = seen["trainer"].create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert {(g["lr"], g["momentum"]) for g in optimizer.param_groups} == {(0.01, 0.9)}
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, 1e-4]


def test_only_the_main_process_saves_scores_and_writes_the_card(shapes_coco, tmp_path, monkeypatch):
    """Under `accelerate launch` every process trains; the others writing the weights or the card at the same time
    would race the main one, and scoring the test split again on each would only waste their time."""
    import transformers

    monkeypatch.setattr(transformers.TrainingArguments, "process_index", property(lambda self: 1))  # rank 1 of 2
    ckpt = tmp_path / "ckpt"
    checkpoint().save_pretrained(ckpt)
    results, seen = untrained_detection(ckpt, shapes_coco, tmp_path / "det", min_size=64, max_size=64)
    assert results == [] and "scored" not in seen
    assert not (tmp_path / "det" / "maskrcnn.pth").exists() and not (ckpt / "eval_results.json").exists()


def test_coco_images_are_the_files_pixels_scaled_to_unit_range(shapes_coco):
    """torchvision's detectors normalise with ImageNet statistics themselves: they take images in [0, 1]."""
    from pathlib import Path

    from PIL import Image

    from freeatm_hf.eval.detection import coco_split

    ds = coco_split(shapes_coco, "test", train=False)
    for i in range(len(ds)):
        image, _ = ds[i]
        info = ds.coco.loadImgs(ds.ids[i])[0]
        pixels = np.array(Image.open(Path(shapes_coco) / "images" / "test" / info["file_name"]).convert("RGB"))
        torch.testing.assert_close(image.as_subclass(torch.Tensor), torch.from_numpy(pixels).permute(2, 0, 1) / 255)


def test_a_box_of_zero_height_is_left_out_of_training_as_torchvisions_coco_reference_does(tmp_path):
    """COCO train2017 holds two annotations whose box has height 0; Mask R-CNN refuses such a target ("All
    bounding boxes should have positive height and width"), which ended the run when a batch drew its image."""
    from PIL import Image

    from freeatm_hf.eval.detection import category_ids, coco_split, collate, maskrcnn_from_backbone

    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (48, 64), (90, 20, 200)).save(tmp_path / "images" / "train" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 30], "area": 600, "iscrowd": 0,
             "segmentation": [[4, 4, 24, 4, 24, 34, 4, 34]]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [30, 40, 10, 0], "area": 0, "iscrowd": 0,
             "segmentation": [[30, 40, 40, 40, 40, 40.5, 30, 40.5]]}]
    (tmp_path / "annotations" / "train.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 48, "height": 64}], "annotations": anns,
        "categories": [{"id": 7, "name": "thing"}]}))
    train = coco_split(tmp_path, "train", train=False)  # no flip: the box is known
    target = collate([train[0]], category_ids(train))["targets"][0]
    assert target["boxes"].tolist() == [[4.0, 4.0, 24.0, 34.0]]
    assert target["labels"].tolist() == [1] and target["masks"].shape == (1, 64, 48)
    torch.manual_seed(0)
    det = maskrcnn_from_backbone(checkpoint(), num_classes=1, min_size=64, max_size=64).train()
    assert all(torch.isfinite(v) for v in det([train[0][0].as_subclass(torch.Tensor)], [target]).values())
