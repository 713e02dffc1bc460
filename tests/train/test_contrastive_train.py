import copy

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from freeatm_hf.spaces import space_dir
from freeatm_hf.train.callbacks import LRMilestonesCallback
from freeatm_hf.train.contrastive import ContrastiveArguments, build_model, build_optimizer, train

DATA = str(space_dir() / "example_dataset")


def small_args(**kw):
    base = dict(dataset=DATA, backbone="resnet18", image_size=48, proj_hidden_dim=64, proj_dim=32, queue_size=64,
                optimizer="adamw", crop_scale_min=0.5, min_visible=0.05)
    return ContrastiveArguments(**{**base, **kw})


def training_args(tmp_path, steps=30, **kw):
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=steps,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", use_cpu=True,
                             seed=0, dataloader_num_workers=0, **kw)


def losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("method,pooling", [("simclr", "attention"), ("simclr", "image"), ("moco", "attention"),
                                            ("moco", "image")])
def test_a_few_trainer_steps_reduce_the_loss_and_move_every_parameter(method, pooling, tmp_path, shapes_data):
    from transformers import set_seed

    # A short queue and a faster key encoder, so that 30 steps on 64 scenes are a real MoCo run in miniature.
    args = small_args(pooling=pooling, dataset=shapes_data, queue_size=16, momentum=0.99)
    set_seed(0)  # what `train` does before building its model: the same initial weights
    init = {n: p.detach().clone() for n, p in build_model(method, args).named_parameters()}
    trainer = train(method, args, training_args(tmp_path, steps=40))
    ls = losses(trainer)
    assert len(ls) == 40
    # From step 2 on (MoCo's queue starts as random vectors, easy negatives, and is full after one step).
    assert sum(ls[-10:]) / 10 < sum(ls[2:12]) / 10
    trained = dict(trainer.model.named_parameters())
    moved = [n for n, p in trained.items() if p.requires_grad and not torch.equal(p.detach().cpu(), init[n])]
    assert len(moved) == sum(p.requires_grad for p in trained.values())
    assert (tmp_path / "model.safetensors").is_file()
    if method == "moco":  # the momentum callback moved the key encoder too
        key = dict(trainer.model.key_backbone.named_parameters())
        assert not torch.equal(key["conv1.weight"].cpu(), init["key_backbone.conv1.weight"])


def test_every_checkpoint_gets_its_model_card(tmp_path, shapes_data):
    from huggingface_hub import ModelCard

    targs = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, max_steps=4,
                              save_strategy="steps", save_steps=2, report_to="none", use_cpu=True,
                              dataloader_num_workers=0)
    train("simclr", small_args(dataset=shapes_data), targs)
    for folder in (tmp_path / "run" / "checkpoint-2", tmp_path / "run" / "checkpoint-4", tmp_path / "run"):
        card = ModelCard.load(folder / "README.md")
        assert "simclr" in card.data.tags and "attention-masks" in card.data.tags
        # A local folder never pushed has no Hub id, and its path on this machine stays out of a public card.
        assert not card.data.datasets and str(shapes_data) not in card.text and "not on the Hub" in card.text
        assert "per_device_train_batch_size" in card.text


def test_mix_of_synthetic_and_real_data(tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from PIL import Image

    from freeatm_hf.data.reading import pretraining_dataset

    real = tmp_path / "real"
    (real / "data").mkdir(parents=True)
    rows = [{"img": Image.new("RGB", (40, 40), (i * 30, 0, 0)), "label": i} for i in range(6)]
    Dataset.from_list(rows).cast_column("img", ImageFeature()).to_parquet(str(real / "data" / "train.parquet"))
    counts = {}
    ds = pretraining_dataset(DATA, str(real), mode="mix", mix_ratio=0.5, real_image_column="img", source_rows=counts)
    kinds = [len(r["objects"]) > 0 for r in ds]
    assert any(kinds) and not all(kinds)  # both kinds present
    real_rows = sum(r["prompt"] == "" for r in ds)  # the real images have no caption; every generated row has one
    assert counts == {"synthetic_rows": len(ds) - real_rows, "real_rows": real_rows} and 0 < real_rows < len(ds)
    only_real = pretraining_dataset(real=str(real), mode="real", real_image_column="img")
    assert len(only_real) == 6 and all(r["objects"] == [] and r["prompt"] == "" for r in only_real)
    assert [r["image"].getpixel((0, 0)) for r in only_real] == [(i * 30, 0, 0) for i in range(6)]
    # The empty columns are added beside the images, not by writing every image into a new cache file (`map`).
    from freeatm_hf.data.reading import load

    assert only_real.cache_files == load(str(real)).cache_files
    counts = {}
    mixed_real = pretraining_dataset(DATA, str(real), mode="mix", mix_ratio=1.0, real_image_column="img",
                                     source_rows=counts)
    assert counts == {"synthetic_rows": 0, "real_rows": 6} == {"synthetic_rows": 0, "real_rows": len(mixed_real)}
    assert {f["filename"] for f in mixed_real.cache_files} <= {f["filename"] for f in
                                                              load(str(real)).cache_files + load(DATA).cache_files}
    # Streaming makes the same draw of sources, typed alike, as it reads them; a stream is read in its own order,
    # so each source gives its first rows (the map-style mix draws them from the whole of each source).
    streamed = list(pretraining_dataset(DATA, str(real), mode="mix", mix_ratio=0.5, real_image_column="img",
                                        streaming=True))
    assert [r["prompt"] == "" for r in streamed] == [r["prompt"] == "" for r in ds]
    for part, name in ((pretraining_dataset(DATA), "synthetic"), (only_real, "real")):
        rows = [r for r in streamed if (r["prompt"] == "") is (name == "real")]
        assert [(len(r["objects"]), r["prompt"], r["image"].tobytes()) for r in rows] == [
            (len(r["objects"]), r["prompt"], r["image"].tobytes()) for r in part.select(range(len(rows)))], name
    with pytest.raises(ValueError, match="needs a real dataset"):
        pretraining_dataset(DATA, mode="mix")


def test_lr_milestones_callback_scales_the_learning_rate_at_its_epochs():
    from types import SimpleNamespace

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cb = LRMilestonesCallback([2, 4])
    seen = []
    for epoch in range(6):
        cb.on_epoch_begin(None, SimpleNamespace(epoch=epoch), None, lr_scheduler=sched, optimizer=opt)
        sched.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.03, 0.03, 0.003, 0.003, 0.0003, 0.0003])

    # Resumed at epoch 3 from saved optimizer and scheduler states (a fresh callback, as in a new process):
    # the rate is 0.1× the initial one, not 0.1× the already-scaled rate the scheduler saved.
    p2 = torch.nn.Parameter(torch.zeros(1))
    opt2 = torch.optim.SGD([p2], lr=0.03)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    resumed = LRMilestonesCallback([2, 4])
    resumed.on_epoch_begin(None, SimpleNamespace(epoch=3), None, lr_scheduler=sched2, optimizer=opt2)
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.003)


def test_lr_milestones_go_by_the_epoch_under_way_on_a_fractional_epoch():
    """A run resumed mid-epoch reports a fractional epoch: 3.6 is still epoch 3 (one milestone passed, not two),
    and a float sum just short of an epoch's start (1.9999999) is that epoch."""
    from types import SimpleNamespace

    for epoch, factor in ((3.6, 0.1), (1.9999999, 0.1), (1.5, 1.0), (4.0, 0.01)):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.03)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        LRMilestonesCallback([2, 4]).on_epoch_begin(None, SimpleNamespace(epoch=epoch), None, lr_scheduler=sched,
                                                    optimizer=opt)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.03 * factor), epoch


def test_train_help(capsys):
    from freeatm_hf import cli

    cli.main(["train", "--help"])
    assert "simclr" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["train", "simclr", "--help"])


def test_streaming_training_reads_the_dataset_as_it_goes(tmp_path, shapes_data):
    args = small_args(dataset=shapes_data, streaming=True)
    trainer = train("simclr", args, training_args(tmp_path, steps=3))
    assert trainer.state.global_step == 3 and len(losses(trainer)) == 3


def test_lars_adapts_and_decays_weights_only_and_sgd_is_plain_momentum_sgd():
    """One step from rest, by SimCLR's LARS formula: weights move by lr·η‖w‖/(‖g‖ + wd‖w‖)·(g + wd·w);
    biases and norm parameters get neither decay nor adaptation (a plain step). SGD, MoCo's, decays all."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    lr, wd = 0.5, 1e-2
    for name, expected_type in (("lars", "Lars"), ("sgd", "SGD")):
        model = copy.deepcopy(net)
        opt = build_optimizer(model, name, lr, wd)
        assert type(opt).__name__ == expected_type
        decay, no_decay = opt.param_groups
        decayed = {id(model[0].weight), id(model[2].weight)} if name == "lars" else {id(p) for p in model.parameters()}
        assert {id(p) for p in decay["params"]} == decayed
        assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model(torch.randn(8, 6)).square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            w, g = before[n], grads[n]
            if p.ndim > 1 or name == "sgd":
                step = g + wd * w
                if name == "lars":
                    step = step * 0.001 * w.norm() / (g.norm() + wd * w.norm() + 1e-8)
            else:
                step = g
            torch.testing.assert_close(p.detach(), w - lr * step, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(net, "adagrad", lr, wd)


def test_adamw_takes_trainers_betas_and_epsilon_and_trainers_optim_is_refused(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = build_optimizer(net, "adamw", 1e-3, 0.0, betas=(0.8, 0.95), eps=1e-6)
    assert type(opt) is torch.optim.AdamW
    assert all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in opt.param_groups)
    # Trainer ignores --optim when it is handed an optimizer: a silently different run, so it is an error.
    with pytest.raises(ValueError, match="--optim sgd does not apply.*--optimizer"):
        train("simclr", small_args(), training_args(tmp_path, steps=1, optim="sgd"))
    # The milestones set the rate at each epoch's start: with cosine, every epoch's first step would run at the
    # undecayed rate, so only the constant schedule is taken.
    with pytest.raises(ValueError, match="--lr_milestones .* --lr_scheduler_type constant, not cosine"):
        train("moco", small_args(lr_milestones=[2]), training_args(tmp_path, steps=1, lr_scheduler_type="cosine"))


@pytest.mark.parametrize("method,jitter", [("simclr", (0.8, 0.8, 0.8, 0.2)), ("moco", (0.4, 0.4, 0.4, 0.1))])
def test_colour_jitter_is_the_methods_own_on_the_device_and_in_the_workers(method, jitter, tmp_path, monkeypatch):
    """SimCLR's paper setting is colour strength 1: ColorJitter(0.8, 0.8, 0.8, 0.2); MoCo-v2's is half that."""
    from freeatm_hf.data import transforms

    built, photometric = [], transforms.simclr_photometric

    def noting_photometric(*args, **kwargs):
        built.append(photometric(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(transforms, "simclr_photometric", noting_photometric)
    aug = train(method, small_args(), training_args(tmp_path / "device", steps=1)).gpu_augment
    assert (aug.brightness, aug.contrast, aug.saturation, aug.hue) == pytest.approx(jitter)
    train(method, small_args(gpu_photometric=False), training_args(tmp_path / "workers", steps=1))
    (colour,) = built
    (cj,) = colour.transforms[0].transforms
    b, c, s, h = jitter
    assert [*cj.brightness, *cj.contrast, *cj.saturation] == pytest.approx([1 - b, 1 + b, 1 - c, 1 + c, 1 - s, 1 + s])
    assert cj.hue == pytest.approx((-h, h)) and colour.transforms[0].p == 0.8


def test_streaming_refuses_batches_dispatched_from_the_main_process(tmp_path):
    with pytest.raises(ValueError, match="--streaming cannot dispatch batches"):
        train("simclr", small_args(streaming=True),
              training_args(tmp_path, steps=1, accelerator_config={"dispatch_batches": True}))


def test_each_methods_own_temperature_queue_and_momentum_reach_its_model():
    simclr, moco = build_model("simclr", small_args()), build_model("moco", small_args(queue_size=16, momentum=0.9))
    assert simclr.config.nce_temperature == 0.1 and moco.config.nce_temperature == 0.2  # SimCLR's, MoCo-v2's
    assert moco.queue.shape == (16, 32)  # the given queue length, of projections
    assert (moco.config.queue_size, moco.config.momentum) == (16, 0.9)
    assert build_model("simclr", small_args(nce_temperature=0.5)).config.nce_temperature == 0.5
    with pytest.raises(ValueError, match="unknown method 'byol'"):
        build_model("byol", small_args())


def test_lars_and_sgd_carry_momentum_0_9_as_a_peer_sgd_does():
    """Two steps: the second one carries the first one's momentum (SimCLR's and MoCo's 0.9)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(8, 6)
    ours, peer = copy.deepcopy(net), copy.deepcopy(net)
    opt = build_optimizer(ours, "sgd", 0.1, 1e-2)
    ref = torch.optim.SGD(peer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(2):
        for model, o in ((ours, opt), (peer, ref)):
            o.zero_grad()
            model(x).square().mean().backward()
            o.step()
    for a, b in zip(ours.parameters(), peer.parameters()):
        torch.testing.assert_close(a, b)
    assert all(g["momentum"] == 0.9 for g in build_optimizer(net, "lars", 0.1, 1e-2).param_groups)


def test_colour_strength_and_mask_threshold_bounds():
    assert small_args(color_strength=1.25).color_strength == 1.25 and small_args(mask_threshold=0.0)
    with pytest.raises(ValueError, match="--color_strength must be in"):
        small_args(color_strength=1.3)
    with pytest.raises(ValueError, match="--mask_threshold applies to maps normalized"):
        small_args(mask_threshold=1.0)


def test_milestones_refuse_any_schedule_but_constant(tmp_path):
    with pytest.raises(ValueError, match="--lr_milestones .* constant, not linear"):
        train("moco", small_args(lr_milestones=[2]), training_args(tmp_path, steps=1))  # Trainer's default


def test_a_given_colour_strength_optimizer_and_betas_are_the_ones_trained_and_carded(tmp_path):
    import json

    trainer = train("moco", small_args(color_strength=0.3), training_args(tmp_path, steps=1, adam_beta1=0.8,
                                                                          adam_beta2=0.95))
    aug = trainer.gpu_augment
    assert (aug.brightness, aug.hue) == pytest.approx((0.8 * 0.3, 0.2 * 0.3))
    # The blur kernel follows the view side (SimCLR's 10 %), not the paper's 224.
    assert aug.kernel_size == 5
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert type(opt) is torch.optim.AdamW and all(g["betas"] == (0.8, 0.95) for g in opt.param_groups)
    info = json.loads((tmp_path / "card_info.json").read_text())
    assert info["data"]["color_strength"] == 0.3 and info["data"]["image_size"] == 48
    assert info["training"]["optimizer"] == "adamw"


@pytest.mark.parametrize("gpu_photometric, mask_mode", [(True, "binary"), (True, "soft"), (False, "soft")])
def test_the_training_transform_is_the_two_view_transform_with_the_arguments_given(gpu_photometric, mask_mode):
    """`make_transform` crops, keeps instances and thresholds masks as given, computed here by `TwoViewTransform`
    and `MapMasks` themselves under the same draws; on the device path the views travel unnormalized as uint8."""
    from datasets import load_dataset

    from freeatm_hf.data.masks import MapMasks, drawn_objects
    from freeatm_hf.data.rows import rgb
    from freeatm_hf.data.transforms import TwoViewTransform
    from freeatm_hf.train.contrastive import make_transform

    rows = load_dataset(DATA, split="train")[:3]
    args = small_args(image_size=40, crop_scale_min=0.3, min_visible=0.9, mask_threshold=0.25, mask_mode=mask_mode,
                      gpu_photometric=gpu_photometric, color_strength=0.5, min_attention_peak=0.0)
    peer = TwoViewTransform(size=40, scale=(0.3, 1.0), min_visible=0.9, photometric=not gpu_photometric,
                            normalize=not gpu_photometric, color_strength=0.5, uint8_views=gpu_photometric,
                            bool_masks=gpu_photometric and mask_mode == "binary")
    transform = make_transform(args)
    for seed in range(3):
        torch.manual_seed(seed)
        out = transform(dict(rows))
        torch.manual_seed(seed)
        for i in range(3):
            image = rgb(rows["image"][i])
            views = peer(image, MapMasks(drawn_objects(rows["objects"][i], 0.0), (image.height, image.width), 0.25,
                                         mask_mode))
            for k in ("pixel_values_1", "pixel_values_2", "masks_1", "masks_2"):
                assert torch.equal(out[k][i], views[k]), k
    assert out["pixel_values_1"][0].dtype == (torch.uint8 if gpu_photometric else torch.float32)


def test_the_baseline_transform_crops_no_object_masks_and_reads_no_cut(caplog):
    """`--pooling image` pools no masks: its views carry one whole-image mask (cropped, all ones), with the same
    views as before, and no threshold or attention_peak cut is taken from the card (the log said objects were left
    out, the facts held a cut that filtered nothing, and every object's map was cropped twice for nothing)."""
    import logging

    from datasets import load_dataset

    from freeatm_hf.train.contrastive import make_transform

    rows = load_dataset(DATA, split="train")[:2]
    assert all(len(objects) > 1 for objects in rows["objects"])
    masked, baseline = small_args(image_size=40), small_args(image_size=40, pooling="image")
    with caplog.at_level(logging.INFO, logger="freeatm_hf"):
        transform = make_transform(baseline)
    torch.manual_seed(0)
    out = transform(dict(rows))
    torch.manual_seed(0)
    views = make_transform(masked)(dict(rows))
    for i in range(2):
        for k in ("masks_1", "masks_2"):
            assert out[k][i].shape == (1, 40, 40) and bool((out[k][i] == 1).all())
        for k in ("pixel_values_1", "pixel_values_2"):
            assert torch.equal(out[k][i], views[k][i])  # the same draws: only the masks differ
        assert len(views["masks_1"][i]) > 1
    assert baseline.min_attention_peak is None and baseline.mask_threshold is None
    assert masked.min_attention_peak is not None and masked.mask_threshold is not None
    assert not [r for r in caplog.records if "attention_peak" in r.getMessage() or "threshold" in r.getMessage()]


def test_real_data_reads_no_threshold_from_the_synthetic_datasets_card(tmp_path, caplog, monkeypatch):
    """Under `--data_mode real` a recipe's `dataset` is not read, nor its card: the log said "mask threshold 0.4
    (from None's card)", and a recipe folder not generated yet was looked up on the Hub, with retries."""
    import logging

    import freeatm_hf.data.reading as reading
    from freeatm_hf.train.contrastive import make_transform

    def no_card(source):
        raise AssertionError(f"read the card of {source}")

    monkeypatch.setattr(reading, "generation_settings", no_card)
    args = small_args(dataset=str(tmp_path / "not_generated_yet"), data_mode="real", real_dataset=DATA)
    with caplog.at_level(logging.INFO, logger="freeatm_hf"):
        transform = make_transform(args)
    real_rows = {"image": [Image.new("RGB", (40, 40))], "objects": [[]]}  # as_image_objects gives real rows
    assert transform(real_rows)["masks_1"][0].shape == (1, 48, 48)
    assert not [r for r in caplog.records if "threshold" in r.getMessage()]


def test_a_run_starts_from_its_seeds_weights_and_steps_its_lr_at_the_milestones(tmp_path):
    """The same --seed gives the same run whatever the process's random state before it; --lr_milestones lower
    the constant rate (8 rows, batches of 8: an epoch is a step)."""
    runs = []
    for k in range(2):
        torch.manual_seed(100 + k)  # some earlier draws of the process's own
        targs = training_args(tmp_path / str(k), steps=-1, num_train_epochs=3, lr_scheduler_type="constant")
        trainer = train("moco", small_args(lr_milestones=[1, 2]), targs)
        runs.append(trainer)
    lrs = [h["learning_rate"] for h in runs[0].state.log_history if "loss" in h]
    assert len(lrs) == 3 and lrs[0] == pytest.approx(1e-3) and lrs[-1] < lrs[0]  # constant, but for the milestones
    a, b = (dict(t.model.named_parameters()) for t in runs)
    for n in a:
        assert torch.equal(a[n], b[n]), n


@pytest.mark.parametrize("flag,value,match", [
    ("nce_temperature", 0.0, "--nce_temperature must be > 0"),
    ("nce_temperature", -0.1, "--nce_temperature must be > 0"),
    ("queue_size", 0, "--queue_size must be at least 1"), ("image_size", 0, "--image_size must be at least 1"),
    ("crop_scale_min", 1.5, "--crop_scale_min"), ("min_visible", 2.0, "--min_visible"),
    ("mask_mode", "Soft", "--mask_mode must be binary or soft, got 'Soft'"),  # was blamed on a row of the data
    ("backbone", "notamodel", "--backbone 'notamodel' is not a timm model"),
    ("lr_milestones", [0, 160], r"--lr_milestones are epochs, at least 1, got \[0, 160\]"),
    ("optimizer", "", r"--optimizer must be one of lars, sgd, adamw, got ''"),  # was the method's own, unsaid
    ("optimizer", "adagrad", r"--optimizer must be one of lars, sgd, adamw, got 'adagrad'")])
def test_contrastive_flags_out_of_range_are_refused_by_name(flag, value, match):
    with pytest.raises(ValueError, match=match):
        small_args(**{flag: value})


def test_a_given_temperature_is_never_replaced_by_the_default():
    from freeatm_hf.models import MoCoConfig, SimCLRConfig

    assert build_model("simclr", small_args(nce_temperature=0.05)).config.nce_temperature == 0.05
    with pytest.raises(ValueError, match="nce_temperature must be > 0"):
        SimCLRConfig(nce_temperature=0.0)
    with pytest.raises(ValueError, match="queue_size must be at least 1"):
        MoCoConfig(queue_size=0)


@pytest.mark.parametrize("name, says", [("vit_tiny_patch16_224", r"\(1, 197, 192\)"),
                                        ("swin_tiny_patch4_window7_224", r"\(1, 7, 7, 768\)"),
                                        ("mixer_s16_224", r"\(1, 196, 512\)")])
def test_a_backbone_without_a_cnn_feature_map_is_refused_before_training(name, says):
    """A ViT's tokens failed at the first batch (an input size assertion) and a Swin's channels-last map would be
    pooled over the wrong axis: both are refused by name, while CNNs of other families pass."""
    from freeatm_hf.models.encoder import create_backbone

    with pytest.raises(ValueError, match=rf"--backbone '{name}' is not a CNN: its features come as {says}"):
        small_args(backbone=name)
    with pytest.raises(ValueError, match="is not a CNN"):
        create_backbone(name)
    for cnn in ("convnext_atto", "efficientnet_b0", "resnet18.a1_in1k"):
        assert small_args(backbone=cnn).backbone == cnn


@pytest.mark.parametrize("dims", [dict(proj_dim=0), dict(proj_dim=-1), dict(proj_hidden_dim=0)])
def test_a_projection_without_width_is_refused(dims):
    # proj_dim 0 trained with zero gradients and saved the model and its card; -1 and a 0 hidden width were tracebacks.
    with pytest.raises(ValueError, match="--proj_dim and --proj_hidden_dim must be at least 1"):
        small_args(**dims)


def test_an_epochs_keys_are_counted_per_object_and_a_longer_moco_queue_is_warned_of(caplog):
    """A queue longer than an epoch's keys always holds an earlier key of each query's own instance, as a negative."""
    import logging

    from datasets import Dataset

    from freeatm_hf.train.contrastive import check_queue_size, epoch_keys

    objects = [[{"name": "a"}, {"name": "b"}], [{"name": "c"}], [], [{"name": "d"}] * 3]
    ds = Dataset.from_dict({"objects": objects, "row": [0, 1, 2, 3]})
    assert epoch_keys(ds, "instance") == 2 + 1 + 1 + 3  # a row without objects still makes its image's key
    assert epoch_keys(ds, "image") == 4
    assert epoch_keys(ds.select([3, 3, 0]), "instance") == 3 + 3 + 2  # the rows an epoch reads, repeats included
    assert epoch_keys(ds.shuffle(seed=0), "instance") == 7
    assert epoch_keys(Dataset.from_dict({"image": [0, 1, 2]}), "instance") == 3  # real images: one key each
    assert epoch_keys(ds.to_iterable_dataset(), "instance") is None  # a stream's length is unknown
    with caplog.at_level(logging.WARNING, logger="freeatm_hf.train.contrastive"):
        check_queue_size(7, ds, "instance")
        assert not caplog.records
        check_queue_size(65536, ds, "instance")
    (record,) = caplog.records
    assert "--queue_size 65536 is more than the 7 instance keys an epoch" in record.getMessage()
    assert "give --queue_size 1 or less" in record.getMessage()


def test_the_card_states_the_batch_auto_find_batch_size_trained_at(tmp_path, monkeypatch):
    """`--auto_find_batch_size` halves the batch after an out-of-memory error: the run trained at 4, and its card
    (and every checkpoint's) said 8, the batch asked for."""
    import json

    from freeatm_hf.models import SimCLRModel

    forward = SimCLRModel.forward

    def out_of_memory_past_4(self, pixel_values_1, *args, **kwargs):
        if len(pixel_values_1) > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, pixel_values_1, *args, **kwargs)

    monkeypatch.setattr(SimCLRModel, "forward", out_of_memory_past_4)
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, save_steps=1,
                              auto_find_batch_size=True, report_to="none", use_cpu=True, dataloader_num_workers=0)
    trainer = train("simclr", small_args(), targs)
    assert trainer.state.train_batch_size == 4
    for folder in (tmp_path, tmp_path / "checkpoint-1"):
        assert json.loads((folder / "card_info.json").read_text())["training"]["per_device_train_batch_size"] == 4
        assert "| per_device_train_batch_size | `4` |" in (folder / "README.md").read_text()


def test_the_card_states_the_lr_milestones(tmp_path):
    """With --lr_milestones the card said `lr_scheduler_type constant` alone: a rate cut tenfold at each milestone
    read as one rate for the whole run."""
    import json

    train("moco", small_args(lr_milestones=[1, 2]), training_args(tmp_path, steps=1, lr_scheduler_type="constant"))
    assert json.loads((tmp_path / "card_info.json").read_text())["training"]["lr_milestones"] == [1, 2]
    assert "| lr_milestones | `[1, 2]` |" in (tmp_path / "README.md").read_text()
