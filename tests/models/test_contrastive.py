import pytest
import torch
import torch.nn.functional as F

from freeatm_hf.models import METHODS, MoCoConfig, MoCoModel, SimCLRConfig, SimCLRModel
from freeatm_hf.models.losses import instance_nt_xent, moco_info_nce
from freeatm_hf.models.pooling import attention_pool

SMALL = dict(backbone="resnet18", proj_hidden_dim=32, proj_dim=16)


def test_attention_pool_is_eq2_on_hand_made_masks():
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 4, 4)
    masks = torch.zeros(2, 2, 4, 4)
    masks[0, 0, :2, :2] = 1.0  # top-left quadrant
    masks[0, 1] = torch.linspace(0, 1, 16).view(4, 4)  # soft weights
    masks[1, 0, 3, 3] = 0.5  # one cell, weight 0.5
    got = attention_pool(feats, masks)
    ref = torch.zeros(2, 2, 5)
    for b in range(2):
        for k in range(2):
            w = masks[b, k]
            if w.sum() > 0:
                ref[b, k] = sum(w[i, j] * feats[b, :, i, j] for i in range(4) for j in range(4)) / w.sum()
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got[0, 0], feats[0, :, :2, :2].mean((1, 2)))
    torch.testing.assert_close(got[1, 0], feats[1, :, 3, 3])
    assert torch.equal(got[1, 1], torch.zeros(5))  # empty mask → zero (padding)


def test_masks_at_image_resolution_are_area_averaged_to_the_feature_grid():
    feats = torch.randn(1, 3, 2, 2)
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, :4, :2] = 1.0  # half of the top-left cell
    torch.testing.assert_close(attention_pool(feats, masks)[0, 0], feats[0, :, 0, 0])


def test_instance_loss_with_whole_image_masks_equals_simclr_nt_xent():
    from lightly.loss import NTXentLoss

    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    for t in (0.1, 0.5):
        assert instance_nt_xent(z1, z2, t).item() == pytest.approx(NTXentLoss(temperature=t)(z1, z2).item(), rel=1e-5)

    # Through the model: one whole-image mask per image gives the image-level (global average pool) features.
    model = SimCLRModel(SimCLRConfig(**SMALL, pooling="attention")).eval()
    base = SimCLRModel(SimCLRConfig(**SMALL, pooling="image")).eval()
    base.load_state_dict(model.state_dict())
    x1, x2 = torch.randn(3, 3, 64, 64), torch.randn(3, 3, 64, 64)
    ones = torch.ones(3, 1, 64, 64)
    valid = torch.ones(3, 1, dtype=torch.bool)
    a = model(x1, x2, ones, ones, valid)
    b = base(x1, x2)
    torch.testing.assert_close(a.embeddings_1, b.embeddings_1)
    assert a.loss.item() == pytest.approx(NTXentLoss(temperature=0.1)(b.embeddings_1, b.embeddings_2).item(), rel=1e-5)


def test_moco_loss_matches_lightly_with_a_memory_bank_of_the_same_negatives():
    torch.manual_seed(0)
    q, k, queue = torch.randn(4, 8), torch.randn(4, 8), F.normalize(torch.randn(16, 8), dim=-1)
    logits = torch.cat([(F.normalize(q, dim=-1) * F.normalize(k, dim=-1)).sum(-1, keepdim=True),
                        F.normalize(q, dim=-1) @ queue.T], 1) / 0.2
    ref = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert moco_info_nce(q, k, queue, 0.2).item() == pytest.approx(ref.item(), rel=1e-6)


def test_moco_queue_holds_instance_keys_and_wraps_around():
    from freeatm_hf.models.encoder import instance_features

    torch.manual_seed(0)
    model = MoCoModel(MoCoConfig(**SMALL, queue_size=5)).train()
    with torch.no_grad():  # a key encoder of its own (as after EMA steps), so that keys and queries differ
        for p in model.key_modules()[1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    x1, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 2, 64, 64)
    masks[:, 0, :32], masks[:, 1, 32:] = 1.0, 1.0
    valid = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():  # the keys: the second view through the key encoder, computed apart from the model
        keys = model.key_head(instance_features(model.key_backbone, x2, masks, valid, "attention"))
    keys = F.normalize(keys, dim=-1)
    out = model(x1, x2, masks, masks, valid)
    assert out.num_instances == 3 and int(model.queue_ptr) == 3
    torch.testing.assert_close(model.queue[:3], keys)
    assert not torch.allclose(model.queue[:3], F.normalize(out.embeddings_1, dim=-1), atol=1e-2)  # not the queries
    model(x1, x2, masks, masks, valid)  # 3 more: positions 3, 4, then 0
    assert int(model.queue_ptr) == 1
    torch.testing.assert_close(model.queue[[3, 4, 0]], keys)
    model.eval()
    model(x1, x2, masks, masks, valid)
    assert int(model.queue_ptr) == 1  # no enqueue in eval


def test_key_encoder_is_the_ema_of_the_query_encoder():
    model = MoCoModel(MoCoConfig(**SMALL, queue_size=8, momentum=0.9))
    for p in model.key_backbone.parameters():
        assert not p.requires_grad
    key_before = {n: p.clone() for n, p in model.key_backbone.named_parameters()}
    buffers_before = {n: b.clone() for n, b in model.key_backbone.named_buffers()}
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)
        for b in model.backbone.buffers():
            b.add_(3)  # BN statistics move as an EMA; the step counter is copied
    model.momentum_update()
    for n, p in model.backbone.named_parameters():
        torch.testing.assert_close(dict(model.key_backbone.named_parameters())[n], 0.9 * key_before[n] + 0.1 * p)
    key_buffers = dict(model.key_backbone.named_buffers())
    assert any(not b.dtype.is_floating_point for b in key_buffers.values())
    for n, b in model.backbone.named_buffers():
        expect = 0.9 * buffers_before[n] + 0.1 * b if b.dtype.is_floating_point else b
        torch.testing.assert_close(key_buffers[n], expect)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_save_and_load_round_trip_exactly_through_auto_classes(method, tmp_path):
    from transformers import AutoConfig, AutoModel

    config_cls, model_cls = METHODS[method]
    model = model_cls(config_cls(**SMALL, pooling="image"))
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).pooling == "image"
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is model_cls
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="pooling"):
        SimCLRConfig(pooling="max")
    with pytest.raises(ValueError, match="momentum"):
        MoCoConfig(momentum=1.5)
    with pytest.raises(ValueError, match="momentum"):  # [0, 1): at 1 the key encoder would never move
        MoCoConfig(momentum=1.0)


def test_a_simclr_batch_with_one_instance_steps_on_with_zero_loss():
    model = SimCLRModel(SimCLRConfig(**SMALL)).train()
    x = torch.randn(1, 3, 64, 64)
    out = model(x, x.clone())  # image pooling: one image, one instance, no negative
    assert out.loss.item() == 0.0 and out.num_instances == 1
    out.loss.backward()  # the graph is intact: Trainer can step
    # The skipped head still gets a (zero) gradient: DDP waits for one from every parameter.
    assert all(p.grad is not None and not p.grad.any() for p in model.head.parameters())


def test_a_moco_batch_with_one_instance_still_learns_against_the_queue():
    """MoCo's negatives are the queue and its head has no batch norm: one instance is a full InfoNCE term."""
    torch.manual_seed(0)
    model = MoCoModel(MoCoConfig(queue_size=16, **SMALL)).train()
    x = torch.randn(1, 3, 64, 64)
    queue = model.queue.clone()
    out = model(x, x.clone())
    q, k = out.embeddings_1, out.embeddings_2
    torch.testing.assert_close(out.loss, moco_info_nce(q, k, queue, 0.2))
    assert out.loss.item() > 0 and model.queue_ptr.item() == 1
    torch.testing.assert_close(model.queue[0], F.normalize(k[0], dim=-1))


def eval_model(method):
    config_cls, model_cls = METHODS[method]
    kw = {"queue_size": 16} if method == "moco" else {}
    return model_cls(config_cls(**SMALL, **kw)).eval()


def masked_batch(b=2, k=3, size=64):
    torch.manual_seed(1)
    masks = torch.zeros(b, k, size, size)
    for i in range(b):
        for j in range(k):
            masks[i, j, 8 * j : 8 * j + 16, 8 * i : 8 * i + 24] = 1.0
    return torch.randn(b, 3, size, size), torch.randn(b, 3, size, size), masks


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_every_slot_counts_when_no_instance_valid_is_given(method):
    """Masks without `instance_valid` (a caller other than the package's collator): every slot is an instance,
    not one stray row that turned the loss into a silent zero."""
    x1, x2, masks = masked_batch()
    model = eval_model(method)
    with torch.no_grad():
        without = model(x1, x2, masks, masks.clone())
        with_valid = model(x1, x2, masks, masks.clone(), instance_valid=torch.ones(2, 3, dtype=torch.bool))
    assert without.num_instances == 6
    torch.testing.assert_close(without.loss, with_valid.loss)


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_an_instance_whose_mask_vanished_in_one_view_is_left_out(method):
    x1, x2, masks = masked_batch()
    m2 = masks.clone()
    m2[1, 2] = 0  # cropped or resized away in the second view only
    valid = torch.ones(2, 3, dtype=torch.bool)
    model = eval_model(method)
    expected_valid = valid.clone()
    expected_valid[1, 2] = False
    with torch.no_grad():
        got = model(x1, x2, masks, m2, instance_valid=valid)
        want = model(x1, x2, masks, m2, instance_valid=expected_valid)
    assert got.num_instances == 5
    torch.testing.assert_close(got.loss, want.loss)


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_an_evaluation_batch_without_instances_scores_zero_not_an_error(method):
    x1, x2, masks = masked_batch()
    model = eval_model(method)
    with torch.no_grad():
        out = model(x1, x2, masks, masks.clone(), instance_valid=torch.zeros(2, 3, dtype=torch.bool))
    assert out.num_instances == 0 and out.loss.item() == 0.0


def test_masks_are_resized_by_the_share_of_each_cell_they_cover():
    """Eq. 2 on a coarser feature grid: each cell weighs by the share of it the mask covers (not whether it
    touches the mask at all, nor the value at one sampled pixel)."""
    torch.manual_seed(0)
    feats = torch.randn(1, 4, 2, 2)
    masks = torch.zeros(1, 1, 8, 8)
    masks[0, 0, :4, :4] = 1.0  # cell (0, 0): all 16 pixels
    masks[0, 0, :2, 4:6] = 1.0  # cell (0, 1): 4 of 16, including its top-left pixel
    masks[0, 0, 6:8, :4] = 1.0  # cell (1, 0): 8 of 16, not its top-left pixel
    share = torch.tensor([[masks[0, 0, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].mean() for j in range(2)]
                          for i in range(2)])
    assert share.tolist() == [[1.0, 0.25], [0.5, 0.0]]
    ref = (share * feats[0]).sum((1, 2)) / share.sum()
    torch.testing.assert_close(attention_pool(feats, masks)[0, 0], ref)


def two_view_batch():
    """Two views whose images and masks differ (the second view's masks are mirrored), as after augmentation."""
    x1, x2, masks = masked_batch()
    return x1, x2, masks, masks.flip(-1)


def pooled_by_hand(backbone, x, masks):
    """Eq. 2 from the feature map, every slot an instance, written out apart from `instance_features`."""
    fmap = backbone.forward_features(x)
    a = F.adaptive_avg_pool2d(masks.flatten(0, 1)[:, None], fmap.shape[-2:]).view(*masks.shape[:2], *fmap.shape[-2:])
    return (torch.einsum("bkhw,bchw->bkc", a, fmap) / a.sum((2, 3))[..., None]).flatten(0, 1)


def test_simclr_embeds_each_view_with_its_own_masks_and_scores_at_its_own_temperature():
    torch.manual_seed(0)
    model = SimCLRModel(SimCLRConfig(**SMALL, nce_temperature=0.5)).eval()
    x1, x2, m1, m2 = two_view_batch()
    with torch.no_grad():
        out = model(x1, x2, m1, m2)
        z1 = model.head(pooled_by_hand(model.backbone, x1, m1))
        z2 = model.head(pooled_by_hand(model.backbone, x2, m2))
    torch.testing.assert_close(out.embeddings_1, z1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.embeddings_2, z2, atol=1e-5, rtol=1e-4)
    assert out.loss.item() == pytest.approx(instance_nt_xent(z1, z2, 0.5).item(), rel=1e-4)
    assert out.loss.item() != pytest.approx(instance_nt_xent(z1, z2, 0.1).item(), rel=1e-2)


def test_moco_keys_come_from_the_key_encoder_on_the_second_view_and_its_own_masks():
    torch.manual_seed(0)
    model = MoCoModel(MoCoConfig(**SMALL, queue_size=16, nce_temperature=0.5)).train()
    with torch.no_grad():  # a key encoder of its own, backbone and head (as after EMA steps)
        for p in [*model.key_backbone.parameters(), *model.key_head.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    model.key_backbone.eval()  # its BN statistics fixed, so that the reference sees the same key encoder
    model.backbone.eval()
    x1, x2, m1, m2 = two_view_batch()
    queue = model.queue.clone()
    with torch.no_grad():
        q = model.head(pooled_by_hand(model.backbone, x1, m1))
        k = model.key_head(pooled_by_hand(model.key_backbone, x2, m2))
    out = model(x1, x2, m1, m2)
    torch.testing.assert_close(out.embeddings_1.detach(), q, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.embeddings_2, k, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.queue[:6], F.normalize(k, dim=-1), atol=1e-5, rtol=1e-4)
    assert out.loss.item() == pytest.approx(moco_info_nce(q, k, queue, 0.5).item(), rel=1e-4)


def test_a_queue_given_more_rows_than_it_holds_keeps_the_newest():
    from freeatm_hf.models.momentum import enqueue_

    feats, ids, ptr = torch.zeros(5, 2), torch.full((5,), -1), torch.tensor(3)
    rows = torch.arange(14.0).view(7, 2)
    enqueue_([feats, ids], ptr, [rows, torch.arange(7)])
    # A ring written row by row from slot 3 ends with the last five rows (2..6), each written once.
    assert sorted(ids.tolist()) == [2, 3, 4, 5, 6]
    torch.testing.assert_close(feats, rows[ids])
    # The oldest of them is overwritten first.
    enqueue_([feats, ids], ptr, [torch.full((1, 2), -7.0), torch.tensor([70])])
    assert sorted(ids.tolist()) == [3, 4, 5, 6, 70]


def test_projection_head_is_linear_bn_relu_linear():
    """SimCLR / MoCo-v2's MLP, written out: Linear (no bias) → batch norm (batch statistics) → ReLU → Linear."""
    from freeatm_hf.models.encoder import projection_head

    torch.manual_seed(0)
    head = projection_head(8, 16, 4).train()
    first, last = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert first.bias is None
    x = torch.randn(10, 8)
    h = x @ first.weight.T
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(head(x), h.clamp(min=0) @ last.weight.T + last.bias, rtol=1e-4, atol=1e-5)


def test_a_faint_soft_mask_still_counts_as_present():
    from freeatm_hf.models.encoder import paired_instances

    m1 = torch.zeros(1, 3, 4, 4)
    m2 = torch.zeros(1, 3, 4, 4)
    m1[0, :, 1, 1] = 0.2  # soft masks: a faint share of every instance in the first view
    m2[0, 0, 2, 2], m2[0, 1, 0, 0] = 0.3, 1.0  # the third instance is gone from the second view
    assert paired_instances(m1, m2, None).tolist() == [[True, True, False]]
    valid = torch.tensor([[1, 0, 1]])
    assert paired_instances(m1, m2, valid).tolist() == [[True, False, False]]
    assert paired_instances(None, None, valid) is valid  # no masks: image pooling


def test_instance_features_are_row_major_over_images_then_instances():
    from freeatm_hf.models.encoder import instance_features

    class Grid(torch.nn.Module):  # a "backbone" whose feature map is its input
        def forward_features(self, x):
            return x

    torch.manual_seed(0)
    fmap, masks = torch.randn(2, 5, 4, 4), torch.rand(2, 3, 4, 4)
    pooled = attention_pool(fmap, masks)
    got = instance_features(Grid(), fmap, masks, None, "attention")
    torch.testing.assert_close(got, torch.stack([pooled[b, k] for b in range(2) for k in range(3)]))
    valid = torch.tensor([[True, False, True], [False, True, False]])
    torch.testing.assert_close(instance_features(Grid(), fmap, masks, valid, "attention"),
                               torch.stack([pooled[0, 0], pooled[0, 2], pooled[1, 1]]))
    torch.testing.assert_close(instance_features(Grid(), fmap, masks, valid, "image"), fmap.mean((2, 3)))


@pytest.mark.parametrize("method", ["simclr", "moco"])
@pytest.mark.parametrize("given", ["masks_1", "masks_2"])
def test_masks_of_one_view_only_are_refused(method, given):
    """With one view's masks the other was pooled whole: object i of one view contrasted with image i of the other
    (SimCLR 1.60, MoCo 0.17 on one instance per image), no error."""
    x1, x2, masks = masked_batch(k=1)
    with pytest.raises(ValueError, match="masks_1 and masks_2"):
        eval_model(method)(x1, x2, **{given: masks})
