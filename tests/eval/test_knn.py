import pytest
import torch
import torch.nn.functional as F

from freeatm_hf.eval.knn import accuracy, knn_classify, linear_probe


def test_knn_weighted_vote_against_a_hand_computed_case():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    test = torch.tensor([[1.0, 0.2]])
    scores = knn_classify(train, labels, test, k=3, temperature=0.5, num_classes=3)
    t, tr = F.normalize(test, dim=1), F.normalize(train, dim=1)
    sims = (t @ tr.T)[0]
    top = sims.topk(3)
    expected = torch.zeros(3)
    for s, i in zip(top.values, top.indices):
        expected[labels[i]] += torch.exp(s / 0.5)
    # Up to the row's factor exp(-nearest / T), which keeps the weights finite at any temperature.
    torch.testing.assert_close(scores[0], expected / torch.exp(top.values[0] / 0.5))
    assert scores.argmax(1).item() == 0
    assert accuracy(scores, torch.tensor([0])) == 1.0


def test_a_low_temperature_still_weighs_three_close_neighbours_above_one_farther():
    """At T = 0.01 exp(0.99 / T) and exp(0.95 / T) both overflow float32 to inf: the classes tied, and the vote went
    to the lower class index whatever the neighbours were."""
    train = F.normalize(torch.tensor([[1.0, 0.0], [0.99, (1 - 0.99**2) ** 0.5], [0.95, (1 - 0.95**2) ** 0.5]]), dim=1)
    train = torch.cat([train[2:], train[1:2].repeat(3, 1)])  # class 0: one at 0.95; class 1: three at 0.99
    labels = torch.tensor([0, 1, 1, 1])
    scores = knn_classify(train, labels, torch.tensor([[1.0, 0.0]]), k=4, temperature=0.01, num_classes=2)
    assert torch.isfinite(scores).all()
    assert scores.argmax(1).item() == 1
    torch.testing.assert_close(scores[0, 0] / scores[0, 1], torch.exp(torch.tensor(-4.0)) / 3, rtol=1e-3, atol=0)


def test_knn_chunks_give_the_same_scores():
    torch.manual_seed(0)
    tr, te, y = torch.randn(50, 8), torch.randn(30, 8), torch.randint(0, 4, (50,))
    torch.testing.assert_close(knn_classify(tr, y, te, k=5, chunk=7), knn_classify(tr, y, te, k=5, chunk=1000))


def test_linear_probe_separates_linearly_separable_features():
    torch.manual_seed(0)
    centers = 4 * F.normalize(torch.randn(5, 32), dim=1)
    y = torch.randint(0, 5, (600,))
    x = centers[y] + 0.3 * torch.randn(600, 32)  # separated blobs: a linear boundary exists with a margin
    scores = linear_probe(x[:400], y[:400], x[400:], num_classes=5)
    assert accuracy(scores, y[400:]) >= 0.99


def test_linear_probe_ignores_features_constant_on_the_training_set():
    """A dead channel (0 on every training image, as after a ReLU) that fires on test images must not move the
    scores: it carries nothing the head could have learned."""
    torch.manual_seed(0)
    centers = 4 * F.normalize(torch.randn(3, 16), dim=1)
    y = torch.randint(0, 3, (300,))
    x = centers[y] + 0.3 * torch.randn(300, 16)
    dead = torch.zeros(300, 4)
    dead[200:] = torch.rand(100, 4) * 0.2  # only the test rows
    xd = torch.cat([x, dead], 1)
    fired = linear_probe(xd[:200], y[:200], xd[200:], num_classes=3)
    silent = linear_probe(xd[:200], y[:200], torch.cat([x[200:], torch.zeros(100, 4)], 1), num_classes=3)
    torch.testing.assert_close(fired, silent)
    assert accuracy(fired, y[200:]) >= 0.99


def test_multilabel_probe_finds_which_labels_are_present():
    from freeatm_hf.eval.knn import multilabel_linear_probe, multilabel_scores

    torch.manual_seed(0)
    directions = 3 * F.normalize(torch.randn(6, 24), dim=1)
    present = (torch.rand(500, 6) < 0.4).long()
    x = present.float() @ directions + 0.2 * torch.randn(500, 24)  # each present label adds its direction
    logits = multilabel_linear_probe(x[:350], present[:350], x[350:])
    r = multilabel_scores(logits, present[350:])
    assert r["map"] >= 0.99 and r["exact_set_accuracy"] >= 0.9
    # Shuffled targets carry no signal: mAP falls to about the label frequency.
    shuffled = present[torch.randperm(350)]
    r0 = multilabel_scores(multilabel_linear_probe(x[:350], shuffled, x[350:]), present[350:])
    assert r0["map"] < 0.6


def test_multilabel_scores_against_hand_cases():
    from freeatm_hf.eval.knn import multilabel_scores

    targets = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    perfect = torch.tensor([[5.0, -5.0], [-5.0, 5.0], [5.0, 5.0], [-5.0, -5.0]])
    assert multilabel_scores(perfect, targets) == {"map": 1.0, "exact_set_accuracy": 1.0}
    # Label 0 ranks its positives 1st and 3rd: AP = (1/1 + 2/3) / 2; label 1 is perfect; one set is wrong.
    scores = torch.tensor([[3.0, -5.0], [2.0, 5.0], [1.0, 5.0], [-5.0, -5.0]])
    r = multilabel_scores(scores, targets)
    assert r["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert r["exact_set_accuracy"] == 0.75
    # A label no test example has has no AP: averaged over the labels present (as scikit-learn), not as a 0.
    absent = torch.cat([targets, torch.zeros(4, 1, dtype=torch.long)], 1)
    assert multilabel_scores(torch.cat([perfect, torch.zeros(4, 1)], 1), absent)["map"] == 1.0
    with pytest.raises(ValueError, match="no label has a positive"):
        multilabel_scores(perfect, torch.zeros_like(targets))


def test_multilabel_average_precision_ranks_by_the_logits_even_where_the_sigmoid_rounds_them_to_one():
    from freeatm_hf.eval.knn import multilabel_scores

    # Label 0: a confident negative (logit 30) above two positives (25, 20): AP = (1/2 + 2/3) / 2. In float32 the
    # three sigmoids are all 1.0, a tie that would score 2/3. Label 1 is ranked perfectly.
    targets = torch.tensor([[0, 1], [1, 0], [1, 0], [0, 1]])
    logits = torch.tensor([[30.0, 5.0], [25.0, -5.0], [20.0, -5.0], [-3.0, 5.0]])
    assert multilabel_scores(logits, targets)["map"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
    # Real ties stay ties: both positives level with the negative give one threshold, precision 2/3.
    tied = torch.tensor([[4.0, 5.0], [4.0, -5.0], [4.0, -5.0], [-3.0, 5.0]])
    assert multilabel_scores(tied, targets)["map"] == pytest.approx((2 / 3 + 1) / 2)


def test_multilabel_scores_with_a_single_label_present():
    from freeatm_hf.eval.knn import multilabel_scores

    # One label with positives among several (or a one-label task) is scored, not refused by torchmetrics'
    # multilabel AP, which wants at least two labels.
    targets = torch.tensor([[1, 0], [0, 0], [1, 0], [0, 0]])
    logits = torch.tensor([[2.0, -1.0], [3.0, -1.0], [1.0, -1.0], [-1.0, -1.0]])
    assert multilabel_scores(logits, targets)["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert multilabel_scores(logits[:, :1], targets[:, :1])["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def _rotated_exif():
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    return exif


def test_decoding_on_the_device_gives_the_pil_paths_features_in_order():
    """`decode="torchvision"` (the GPU path: bytes to the device, batched JPEG decode, resize and crop there) is
    run here on the CPU: same rows, same order, JPEG, PNG and other formats mixed, features as the PIL loader's."""
    import io

    import numpy as np
    import timm
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from PIL import Image
    from torchvision.transforms import v2

    from freeatm_hf.eval.knn import extract_features

    rng = np.random.default_rng(0)
    rows = []
    for i in range(7):
        img = Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)).resize((56, 40 + 8 * i))
        buf = io.BytesIO()
        img.save(buf, "JPEG" if i % 2 else "PNG", quality=95)
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": i})
    # A photo stored sideways with an EXIF rotation (which `datasets` applies), and a BMP (torchvision reads none).
    for i, (fmt, extra) in enumerate([("JPEG", {"exif": _rotated_exif()}), ("BMP", {})], start=7):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 64, 3), dtype=np.uint8)).save(buf, fmt, **extra)
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": i})
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature())
    assert ds[7]["image"].size == (24, 64)  # rotated by the PIL path
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(36, antialias=True), v2.CenterCrop(32),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    pil, y_pil = extract_features(net, ds, tf, batch_size=3, device="cpu", decode="pil")
    tv, y_tv = extract_features(net, ds, tf, batch_size=3, device="cpu", decode="torchvision")
    assert y_pil.tolist() == y_tv.tolist() == list(range(9))
    # PIL and torch resample differently by a grey level or so: the features agree closely, row by row.
    assert F.cosine_similarity(pil, tv).min() > 0.995
    assert (F.cosine_similarity(pil[:, None], tv[None], dim=-1).argmax(1) == torch.arange(9)).all()
    with pytest.raises(ValueError, match="decode must be"):
        extract_features(net, ds, tf, device="cpu", decode="nvjpeg")


def test_linear_probe_refuses_a_single_training_row():
    """Its spread is NaN: every standardized feature became NaN and L-BFGS crashed with an overflow message."""
    with pytest.raises(ValueError, match="at least 2 training rows"):
        linear_probe(torch.ones(1, 4), torch.tensor([0]), torch.ones(2, 4), num_classes=2)


def test_linear_probe_fits_its_head_where_the_features_are(monkeypatch):
    """`freeatm eval knn` keeps the features on the GPU: a head left on the CPU crashed there after extraction
    (shown on the meta device, with one closure call standing in for L-BFGS, which reads values)."""
    devices = []

    class OneCall:
        def __init__(self, params, **kwargs):
            devices.extend(p.device.type for p in params)

        def zero_grad(self):
            pass

        def step(self, closure):
            closure()

    monkeypatch.setattr(torch.optim, "LBFGS", OneCall)
    x, y = torch.randn(10, 4, device="meta"), torch.zeros(10, dtype=torch.long, device="meta")
    assert linear_probe(x, y, x, num_classes=2).device.type == "meta"
    assert devices == ["meta", "meta"]


def test_a_linear_probe_is_seeded_without_touching_the_callers_random_state():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 6, generator=g), torch.randint(0, 3, (40,), generator=g)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = linear_probe(x, y, x[:5], epochs=5)
    assert torch.equal(torch.rand(3), expected_next)  # the probe's own seed did not reset the caller's stream
    torch.manual_seed(7)
    assert torch.equal(linear_probe(x, y, x[:5], epochs=5), first)  # and its result does not depend on it


def test_each_test_row_is_scored_on_its_own_with_the_training_sets_statistics():
    """Standardization uses the training set's mean and spread only: a test row's scores do not depend on which
    other test rows are scored along with it."""
    torch.manual_seed(0)
    centers = 4 * F.normalize(torch.randn(3, 8), dim=1)
    y = torch.randint(0, 3, (120,))
    x = centers[y] + 0.3 * torch.randn(120, 8)
    test = x[80:] + 2.0  # a shifted test set: its own mean is far from the training mean
    together = linear_probe(x[:80], y[:80], test, num_classes=3, epochs=20)
    alone = linear_probe(x[:80], y[:80], test[:3], num_classes=3, epochs=20)
    torch.testing.assert_close(alone, together[:3])


def test_the_probes_weight_decay_shrinks_the_weights_toward_the_bias_alone():
    """weight_decay penalises the squared weights (not the bias): heavily decayed, every test row gets nearly the
    same scores (the class prior), while a lightly decayed head separates them."""
    torch.manual_seed(0)
    centers = 4 * F.normalize(torch.randn(3, 8), dim=1)
    y = torch.randint(0, 3, (150,))
    x = centers[y] + 0.3 * torch.randn(150, 8)
    light = linear_probe(x[:100], y[:100], x[100:], num_classes=3, weight_decay=1e-4)
    heavy = linear_probe(x[:100], y[:100], x[100:], num_classes=3, weight_decay=100.0)
    assert light.std(0).min() > 1.0
    assert heavy.std(0).max() < 0.05
    prior = torch.bincount(y[:100], minlength=3).float() / 100
    torch.testing.assert_close(heavy.softmax(1).mean(0), prior, atol=0.02, rtol=0)


def test_extracted_features_are_the_global_average_pool_of_the_feature_map():
    import numpy as np
    import timm
    from datasets import Dataset
    from PIL import Image
    from torchvision.transforms import v2

    from freeatm_hf.eval.knn import extract_features

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(5)]
    ds = Dataset.from_list([{"image": im, "label": i % 2} for i, im in enumerate(images)])
    tf = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    feats, labels = extract_features(net, ds, tf, batch_size=2, device="cpu", decode="pil")
    with torch.no_grad():
        fmap = net.forward_features(torch.stack([tf(im) for im in images]))
    assert fmap.shape[-2:] == (2, 2)  # a map to pool, not a single cell
    torch.testing.assert_close(feats, fmap.mean((2, 3)), atol=1e-5, rtol=1e-4)
    assert labels.tolist() == [0, 1, 0, 1, 0]


def test_top_k_accuracy_is_the_share_of_rows_whose_label_is_among_their_k_best_scores():
    g = torch.Generator().manual_seed(0)
    scores, labels = torch.randn(200, 10, generator=g), torch.randint(0, 10, (200,), generator=g)
    ranks = (scores > scores.gather(1, labels[:, None])).sum(1)  # how many classes score above the label's
    for k in (1, 5):
        assert accuracy(scores, labels, topk=k) == pytest.approx((ranks < k).float().mean().item())
    assert 0 < accuracy(scores, labels) < accuracy(scores, labels, topk=5) < 1


def test_a_linear_probe_fits_on_two_training_rows():
    """Two rows have a spread: the smallest training set a probe can standardize, and it separates them."""
    x, y = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]]), torch.tensor([0, 1])
    scores = linear_probe(x, y, x, num_classes=2, epochs=20)
    assert torch.isfinite(scores).all() and scores.argmax(1).tolist() == [0, 1]


def test_a_vits_feature_is_its_class_token_as_timm_pools_it():
    """A token sequence (a ViT's `forward_features`) gives the class token's output: timm's own "token" pooling,
    what its feature-only ViT returns."""
    import numpy as np
    import timm
    from datasets import Dataset
    from PIL import Image
    from torchvision.transforms import v2

    from freeatm_hf.eval.knn import extract_features

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    ds = Dataset.from_list([{"image": im, "label": i} for i, im in enumerate(images)])
    tf = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                            num_classes=0, global_pool="token").eval()
    feats, _ = extract_features(vit, ds, tf, batch_size=2, device="cpu", decode="pil")
    with torch.no_grad():
        torch.testing.assert_close(feats, vit(torch.stack([tf(im) for im in images])), atol=1e-5, rtol=1e-4)


def test_images_stored_by_path_decode_on_the_device_as_on_the_pil_path(tmp_path):
    """An image column of files (`datasets` keeps the path, no bytes) is read from disk for the device decoder."""
    import numpy as np
    import timm
    from datasets import Dataset
    from datasets import Image as ImageFeature
    from PIL import Image
    from torchvision.transforms import v2

    from freeatm_hf.eval.knn import extract_features

    rng = np.random.default_rng(0)
    paths = []
    for i, fmt in enumerate(("png", "jpg")):
        paths.append(str(tmp_path / f"{i}.{fmt}"))
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(paths[-1], quality=95)
    ds = Dataset.from_dict({"image": paths, "label": [0, 1]}).cast_column("image", ImageFeature())
    tf = v2.Compose([v2.PILToTensor(), v2.Resize(32, antialias=True), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    net = timm.create_model("resnet18", pretrained=False, num_classes=0)
    pil, _ = extract_features(net, ds, tf, batch_size=2, device="cpu", decode="pil")
    tv, _ = extract_features(net, ds, tf, batch_size=2, device="cpu", decode="torchvision")
    assert F.cosine_similarity(pil, tv).min() > 0.995  # PIL and torch resample a grey level apart


@pytest.mark.parametrize("k, temperature", [(0, 0.07), (20, 0.0), (20, -1.0)])
def test_a_vote_without_neighbours_or_with_a_non_positive_temperature_is_refused(k, temperature):
    """k = 0 votes for nobody (every test row goes to class 0), temperature 0 makes every weight inf and a negative
    one favours the farthest neighbours: each would be recorded in the card as a kNN accuracy."""
    from freeatm_hf.eval.knn import knn_classify

    feats, labels = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="neighbour|temperature"):
        knn_classify(feats, labels, feats, k=k, temperature=temperature)
