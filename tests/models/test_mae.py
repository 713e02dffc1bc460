import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from freeatm_hf.models import MAEConfig, MAEModel
from freeatm_hf.models.mae import export_vit, guided_noise, patch_scores
from freeatm_hf.train.mae import SIZES, BetaScheduleCallback

TINY = dict(image_size=32, patch_size=8, **SIZES["tiny"])
N, RATIO = 196, 0.75
KEEP = int(N * (1 - RATIO))  # ViTMAE keeps the 49 patches with the smallest noise


def masked(noise):
    """The patches transformers' own `ViTMAEEmbeddings.random_masking` masks for this noise."""
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    emb = ViTMAEEmbeddings(ViTMAEConfig(hidden_size=8, image_size=224, patch_size=16, mask_ratio=RATIO))
    return emb.random_masking(torch.zeros(len(noise), N, 1), noise=noise)[1].bool()


def test_beta_zero_is_exactly_random_masking_without_bias():
    # β = 0 hands ViTMAE exactly the uniform noise it would draw itself: the same masks from the same generator.
    scores = torch.rand(1, N).expand(2000, N)
    plain = masked(torch.rand(2000, N, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(masked(guided_noise(scores, 0.0, RATIO, 2000, N, generator=torch.Generator().manual_seed(3))),
                       plain)
    torch.manual_seed(0)
    m = masked(guided_noise(scores, 0.0, RATIO, 2000, N))
    assert (m.sum(1) == N - KEEP).all()
    top = scores[0].topk(30).indices
    # High-score patches are masked at the random rate (0.75), not more.
    assert abs(m[:, top].float().mean().item() - RATIO) < 0.02


def test_beta_08_masks_exactly_the_top_scoring_share_and_the_rest_at_random():
    torch.manual_seed(1)
    b = 500
    scores = torch.rand(b, N)
    m = masked(guided_noise(scores, 0.8, RATIO, b, N))
    hard = round(0.8 * RATIO * N)  # 118 of the 147 masked patches
    assert (m.sum(1) == N - KEEP).all()
    top = scores.topk(hard, dim=1).indices
    assert m.gather(1, top).all()  # every top-scoring patch is masked
    rest = torch.ones_like(m)
    rest.scatter_(1, top, False)
    # The other 29 masked patches are uniform among the remaining 78.
    share = (m & rest).sum(1).float() / rest.sum(1)
    assert share.mean().item() == pytest.approx((N - KEEP - hard) / (N - hard), abs=1e-6)
    order = scores.argsort(1)  # among the rest, high and low scores are equally likely to be masked
    lo = torch.zeros_like(m).scatter_(1, order[:, :39], True)
    hi = torch.zeros_like(m).scatter_(1, order[:, 39:78], True)
    assert abs((m & lo).float().sum() / lo.sum() - (m & hi).float().sum() / hi.sum()) < 0.03


def test_images_without_masks_get_random_masking():
    scores = torch.full((3, N), float("nan"))
    torch.manual_seed(0)
    a = guided_noise(scores, 0.8, RATIO, 3, N)
    torch.manual_seed(0)
    assert torch.equal(a, torch.rand(3, N))


def test_patch_scores_are_the_highest_object_map_averaged_over_each_patch():
    maps = torch.zeros(2, 32, 32)
    maps[0, :8, :8] = 1.0  # patch 0 fully
    maps[1, :8, 8:16] = 0.5  # patch 1 half strength
    maps[1, :4, :8] = 1.0  # half of patch 0 for object 1: object 0 is higher there
    s = patch_scores(maps, 8)
    assert s.shape == (16,)
    assert s[0] == 1.0 and s[1] == 0.5 and s[2:].abs().sum() == 0
    assert torch.isnan(patch_scores(torch.zeros(0, 32, 32), 8)).all()


def test_beta_schedule_callback_sets_beta_per_step():
    model = MAEModel(MAEConfig(**TINY))
    cb = BetaScheduleCallback(0.8)
    seen = []
    for step in range(5):
        cb.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=5), None, model=model)
        seen.append(model.beta)
    assert seen == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    # A resumed run continues from its restored step; a one-step run is at β = 0.
    cb.on_step_begin(None, SimpleNamespace(global_step=3, max_steps=5), None, model=model)
    assert model.beta == pytest.approx(0.6)
    cb.on_step_begin(None, SimpleNamespace(global_step=0, max_steps=1), None, model=model)
    assert model.beta == 0.0
    # The cap is the callback's own beta_max.
    half = BetaScheduleCallback(0.5)
    for step in range(5):
        half.on_step_begin(None, SimpleNamespace(global_step=step, max_steps=5), None, model=model)
        assert model.beta == pytest.approx(0.5 * step / 4)


def test_model_uses_the_guided_noise_and_loads_into_stock_vitmae(tmp_path):
    from transformers import ViTMAEForPreTraining

    model = MAEModel(MAEConfig(**TINY)).eval()
    model.beta = 0.8
    x = torch.randn(2, 3, 32, 32)
    scores = torch.rand(2, 16)
    out = model(pixel_values=x, patch_scores=scores)
    hard = round(0.8 * 0.75 * 16)
    assert out.mask.gather(1, scores.topk(hard, 1).indices).all()
    model.save_pretrained(tmp_path)
    stock = ViTMAEForPreTraining.from_pretrained(tmp_path)
    noise = torch.rand(2, 16)
    torch.testing.assert_close(stock(pixel_values=x, noise=noise).loss, model(pixel_values=x, noise=noise).loss)


def test_encoder_exports_as_a_plain_vit_with_identical_features(tmp_path):
    from transformers import ViTModel

    torch.manual_seed(0)
    model = MAEModel(MAEConfig(**{**TINY, "mask_ratio": 0.0})).eval()
    export_vit(model, tmp_path)
    vit = ViTModel.from_pretrained(tmp_path).eval()
    x = torch.randn(2, 3, 32, 32)
    ordered = torch.arange(16).float().expand(2, 16)  # keep all patches in their order
    with torch.no_grad():
        ref = model.vit(x, noise=ordered).last_hidden_state
        got = vit(x).last_hidden_state
    assert (ref - got).abs().max().item() < 1e-5


def test_image_and_map_stay_aligned_through_the_mae_transform():
    from PIL import Image

    from freeatm_hf.train.mae import MAEArguments, make_transform

    img = np.full((64, 64, 3), 128, np.uint8)
    img[8:24, 40:56] = (255, 0, 0)
    att = np.zeros((64, 64), np.uint8)
    att[8:24, 40:56] = 255
    cfg = SimpleNamespace(patch_size=8)
    t = make_transform(MAEArguments(image_size=32, patch_size=8, crop_scale_min=0.5), cfg)
    torch.manual_seed(0)
    for _ in range(20):
        out = t({"image": [Image.fromarray(img)], "objects": [[{"attention": Image.fromarray(att)}]]})
        px, s = out["pixel_values"][0], out["patch_scores"][0]
        red = (px[0] > 1.5) & (px[1] < -1.5)  # normalized red
        red_share = torch.nn.functional.avg_pool2d(red[None].float(), 8)[0].flatten()
        # Patches fully covered by the red box have score 1 and vice versa (within one pixel of resampling).
        assert ((red_share > 0.99) <= (s > 0.7)).all() and ((s > 0.99) <= (red_share > 0.7)).all()
        assert not math.isnan(float(s.sum()))


def mae_sincos_reference(dim: int, grid: int) -> np.ndarray:
    """MAE's `get_2d_sincos_pos_embed` from its definition: half the channels encode the column (w), half the
    row (h); each half is [sin(pos·ω), cos(pos·ω)] with ω_i = 1 / 10000^(i / (dim/4)); a zero row for CLS."""
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def one(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], 1)

    return np.concatenate([np.zeros((1, dim)), np.concatenate([one(cols), one(rows)], 1)])


@pytest.mark.parametrize("size", ["tiny", "base"])
def test_position_embeddings_are_maes_fixed_sincos_table(size):
    # transformers 5 left both tables at zero (and frozen): an encoder blind to where patches are.
    cfg = MAEConfig(**{**TINY, **SIZES[size]}) if size == "tiny" else MAEConfig()
    model = MAEModel(cfg)
    grid = cfg.image_size // cfg.patch_size
    for table, dim in ((model.vit.embeddings.position_embeddings, cfg.hidden_size),
                       (model.decoder.decoder_pos_embed, cfg.decoder_hidden_size)):
        np.testing.assert_allclose(table[0].detach().double().numpy(), mae_sincos_reference(dim, grid), atol=1e-6)
        assert not table.requires_grad
    assert model.vit.embeddings.cls_token.std() > 0.01 and model.decoder.mask_token.std() > 0.01


def test_the_decoder_predicts_a_different_patch_at_each_masked_position(tmp_path):
    torch.manual_seed(0)
    model = MAEModel(MAEConfig(**TINY)).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(1, 3, 32, 32))
    pred = out.logits[0][out.mask[0].bool()]
    assert (pred - pred[0]).abs().amax(1)[1:].min() > 1e-3  # every masked patch gets its own prediction
    model.save_pretrained(tmp_path)
    torch.manual_seed(1)
    loaded = MAEModel.from_pretrained(tmp_path)  # the checkpoint's tokens, not a fresh draw
    torch.testing.assert_close(loaded.vit.embeddings.cls_token, model.vit.embeddings.cls_token)
    torch.testing.assert_close(loaded.decoder.mask_token, model.decoder.mask_token)


def test_equal_scores_give_random_masking_not_a_fixed_set_of_patches():
    """An image whose maps are all zero (its objects cropped away) has one score everywhere: the "top" share must
    then be drawn at random, not the same patches in every image."""
    torch.manual_seed(0)
    m = masked(guided_noise(torch.zeros(2000, N), 0.8, RATIO, 2000, N))
    assert (m.sum(1) == N - KEEP).all()
    rate = m.float().mean(0)  # per patch, over images
    assert (rate - RATIO).abs().max().item() < 0.06


def test_patches_tied_at_the_top_score_are_chosen_uniformly_by_the_noise():
    """A saturated 8-bit map or a binary mask gives many patches the score 1.0, where a tie-break added to the score
    (1e-6 · noise) spans ~8 float32 steps: the rest of each tie went by topk's order, choosing the patches at one
    end of the object 13 % of the time and others 20 %, where 10 of 60 is 17 %."""
    b = 20000
    scores = torch.zeros(b, N)
    scores[:, :60] = 1.0
    hard = 10
    noise = guided_noise(scores, hard / (N - KEEP), RATIO, b, N, generator=torch.Generator().manual_seed(0))
    chosen = noise >= 2.0  # the guided share: boosted above every random value
    assert (chosen.sum(1) == hard).all() and not chosen[:, 60:].any()
    rate = chosen[:, :60].float().mean(0)
    assert (rate - hard / 60).abs().max().item() < 0.015


def test_a_share_that_rounds_to_no_patch_is_plain_random_masking():
    # round(0.002 · 0.75 · 196) = 0: no patch is chosen by score, so the noise is the generator's own draw.
    scores = torch.rand(4, N)
    got = guided_noise(scores, 0.002, RATIO, 4, N, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, torch.rand(4, N, generator=torch.Generator().manual_seed(5)))


def test_the_masked_share_and_its_guided_part_follow_the_configs_mask_ratio():
    torch.manual_seed(0)
    model = MAEModel(MAEConfig(**{**TINY, "mask_ratio": 0.5})).eval()
    model.beta = 0.8
    scores = torch.rand(8, 16)
    with torch.no_grad():
        out = model(pixel_values=torch.randn(8, 3, 32, 32), patch_scores=scores)
    assert (out.mask.sum(1) == 8).all()  # half of the 16 patches
    hard = round(0.8 * 0.5 * 16)  # 6 of the 8 masked patches by score, 2 at random
    assert out.mask.gather(1, scores.topk(hard, 1).indices).all()


@pytest.mark.parametrize("n, ratio, beta", [(49, 0.5, 1.0), (49, 0.75, 0.8), (196, 0.9, 0.8), (64, 0.8, 1.0)])
def test_the_guided_share_is_beta_of_the_patches_vitmae_actually_masks(n, ratio, beta):
    """ViTMAE masks n − int(n·(1 − ratio)) patches, not ratio·n, when ratio·n is no whole number (25 of 49 at 0.5):
    β of *that* set is chosen by score, so β = 1 leaves no masked patch to chance."""
    from transformers import ViTMAEConfig
    from transformers.models.vit_mae.modeling_vit_mae import ViTMAEEmbeddings

    side = int(math.isqrt(n))
    emb = ViTMAEEmbeddings(ViTMAEConfig(hidden_size=8, image_size=side, patch_size=1, mask_ratio=ratio))
    torch.manual_seed(0)
    b, scores = 64, torch.rand(64, n)
    m = emb.random_masking(torch.zeros(b, n, 1), noise=guided_noise(scores, beta, ratio, b, n))[1].bool()
    masked_count = n - int(n * (1 - ratio))
    assert (m.sum(1) == masked_count).all()
    hard = round(beta * masked_count)
    assert m.gather(1, scores.topk(hard, dim=1).indices).all()  # the top β share of the masked set, every one
    # and no more by score: the patch ranked next is masked only at the random rate of the rest
    rest_rate = (masked_count - hard) / (n - hard)
    assert m.gather(1, scores.topk(hard + 1, dim=1).indices[:, -1:]).float().mean().item() <= max(rest_rate + 0.2, 0.25)


def test_the_loss_is_maes_normalized_pixel_loss_on_the_masked_patches():
    """MAE's default target: each patch's pixels normalized by their own mean and variance; the loss is the mean
    squared error over the masked patches only (written out from MAE's definition)."""
    assert MAEConfig().norm_pix_loss
    torch.manual_seed(0)
    model = MAEModel(MAEConfig(**TINY)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
    p = 8  # patches in row-major order, each flattened (row, column, channel)
    patches = x.view(2, 3, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, p * p * 3)
    target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6) ** 0.5
    per_patch = ((out.logits - target) ** 2).mean(-1)
    ref = (per_patch * out.mask).sum() / out.mask.sum()
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("change", [{"mask_ratio": 0.0}, {"mask_ratio": 1.0}, {"model_size": "huge"},
                                    {"crop_scale_min": 1.5}, {"crop_scale_min": 0.0}, {"patch_size": 0},
                                    {"image_size": 8, "patch_size": 16}])
def test_training_arguments_that_would_train_nothing_or_fail_later_are_refused(change):
    """mask_ratio 0 masks nothing (loss 0), 1 leaves the encoder no patch; an unknown size was a KeyError and a crop
    scale above 1 a traceback from the first batch."""
    from freeatm_hf.train.mae import MAEArguments

    with pytest.raises(ValueError, match="mask_ratio|model_size|crop_scale_min|patch_size"):
        MAEArguments(dataset="unused", **change)


def test_training_without_the_beta_schedule_is_warned_about(caplog):
    """A plain `Trainer` without `BetaScheduleCallback` left β at 0: random masking (the baseline) under a config
    stating beta_max 0.8, without a word."""
    batch = dict(pixel_values=torch.randn(2, 3, 32, 32), patch_scores=torch.rand(2, 16))
    message = "MAEModel.beta was never set"
    model = MAEModel(MAEConfig(**TINY)).train()
    with caplog.at_level("WARNING", logger="freeatm_hf.models.mae"):
        model(**batch)
        model(**batch)
    assert caplog.text.count(message) == 1 and "BetaScheduleCallback(0.8)" in caplog.text
    caplog.clear()
    scheduled = MAEModel(MAEConfig(**TINY)).train()
    BetaScheduleCallback(0.8).on_step_begin(None, SimpleNamespace(global_step=0, max_steps=5), None, model=scheduled)
    with caplog.at_level("WARNING", logger="freeatm_hf.models.mae"):
        scheduled(**batch)  # β = 0 at the first step, set by the schedule
        MAEModel(MAEConfig(beta_max=0.0, **TINY)).train()(**batch)  # the baseline asks for no schedule
        MAEModel(MAEConfig(**TINY)).eval()(**batch)
        MAEModel(MAEConfig(**TINY)).train()(pixel_values=batch["pixel_values"])  # no scores: nothing to guide
    assert message not in caplog.text


def test_a_compiled_model_is_not_recompiled_as_beta_ramps():
    """`--torch_compile`: β changes at every optimizer step. Read inside the compiled forward, each new value was a
    guard that failed, so every step recompiled the whole model, until dynamo's recompile limit left it eager."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    model = MAEModel(MAEConfig(**TINY)).train()
    counter = CompileCounterWithBackend("aot_eager")  # specializes floats as inductor does
    compiled = torch.compile(model, backend=counter)
    batch = dict(pixel_values=torch.randn(2, 3, 32, 32), patch_scores=torch.rand(2, 16))
    model.beta = 0.0
    compiled(**batch)
    first = counter.frame_count
    for step in range(1, 5):
        model.beta = 0.8 * step / 4
        torch.manual_seed(step)
        loss = compiled(**batch).loss
        torch.manual_seed(step)
        torch.testing.assert_close(loss, model(**batch).loss)  # the compiled forward masks by the current β
    assert counter.frame_count == first
    torch._dynamo.reset()


def test_an_input_of_another_size_is_masked_on_its_own_patch_grid():
    """`interpolate_pos_encoding=True`, as stock ViTMAE takes it: the noise was drawn for the config's 16 patches and
    the forward failed on a 64-patch image (size mismatch)."""
    model = MAEModel(MAEConfig(**TINY)).eval()
    with torch.no_grad():
        out = model(pixel_values=torch.randn(2, 3, 64, 64), interpolate_pos_encoding=True)
    assert out.mask.shape == (2, 64) and (out.mask.sum(1) == 48).all()


def test_noise_given_by_position_masks_as_in_stock_vitmae():
    """`model(x, noise)`, stock ViTMAE's order: the noise was taken for patch scores and the masking drawn at random."""
    from transformers import ViTMAEForPreTraining

    model = MAEModel(MAEConfig(**TINY)).eval()
    stock = ViTMAEForPreTraining(model.config).eval()
    stock.load_state_dict(model.state_dict())
    x, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 16)
    with torch.no_grad():
        got, ref = model(x, noise), stock(x, noise)
    assert torch.equal(got.mask, ref.mask)
    torch.testing.assert_close(got.loss, ref.loss)
