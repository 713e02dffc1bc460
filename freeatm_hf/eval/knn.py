"""Frozen-feature evaluation: kNN (InstDisc's weighted vote) and a linear probe.

    from freeatm_hf.eval.knn import extract_features, knn_classify, linear_probe
"""

import torch
import torch.nn.functional as F

from ..data.rows import rgb


def check_vote(k: int, temperature: float):
    if k < 1:
        raise ValueError(f"kNN needs at least one neighbour, got k={k}")
    if not temperature > 0:
        # 0 makes every weight inf (the vote is then the first class), a negative one favours the farthest neighbours.
        raise ValueError(f"the vote temperature must be positive, got {temperature}")


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, k: int = 20,
                 temperature: float = 0.07, num_classes: int | None = None, chunk: int | None = None) -> torch.Tensor:
    """Class scores `(N_test, C)`: each of the k nearest training features (cosine) votes for its class with
    weight exp(similarity / temperature) (Wu et al., 2018, as used by DINO and solo-learn), a test row's weights
    all divided by its nearest one's, which leaves its ranking of the classes as it was: exp(0.9 / 0.01) is past
    float32, and weights that overflow to inf tie every class they vote for. Test rows go in chunks whose
    similarities to the training set take at most 1 GiB (`chunk` rows if given)."""
    check_vote(k, temperature)
    c = num_classes or int(train_labels.max()) + 1
    train = F.normalize(train_feats.float(), dim=1)
    chunk = chunk or max(1, min(1024, (1 << 28) // max(1, len(train))))
    scores = []
    for start in range(0, len(test_feats), chunk):
        test = F.normalize(test_feats[start : start + chunk].float(), dim=1)
        sim, idx = (test @ train.T).topk(min(k, len(train)), dim=1)
        votes = torch.zeros(len(test), c, device=test.device)
        votes.scatter_add_(1, train_labels[idx], ((sim - sim[:, :1]) / temperature).exp())  # topk: sorted
        scores.append(votes)
    return torch.cat(scores)


def accuracy(scores: torch.Tensor, labels: torch.Tensor, topk: int = 1) -> float:
    """Top-k accuracy of score rows, by the package's `topk_accuracy` evaluate module."""
    from .metrics import load_metric

    top = scores.topk(min(topk, scores.shape[1]), dim=1).indices
    return load_metric("topk_accuracy").compute(predictions=top.tolist(), references=labels.tolist(),
                                                k=top.shape[1])[f"top{top.shape[1]}"]


def _fit_linear(train_feats, targets, test_feats, out_dim: int, loss_fn, epochs: int, lr: float,
                weight_decay: float, seed: int) -> torch.Tensor:
    """A linear head on standardized frozen features, fitted full-batch with L-BFGS; returns test logits.

    A feature constant on the training set (a dead channel, common after ReLU) is left out, in train and test
    alike: its weight can learn nothing, and dividing by its ~0 spread would turn any test value into a huge
    one that the untrained random weight then adds to every score."""
    if len(train_feats) < 2:  # a spread of one row is NaN: every feature would be NaN, and L-BFGS would crash
        raise ValueError(f"a linear probe needs at least 2 training rows, got {len(train_feats)}")
    with torch.random.fork_rng(devices=[train_feats.device] if train_feats.is_cuda else []):  # the caller's draws stay
        torch.manual_seed(seed)
        return _fit_seeded(train_feats, targets, test_feats, out_dim, loss_fn, epochs, lr, weight_decay)


def _fit_seeded(train_feats, targets, test_feats, out_dim, loss_fn, epochs, lr, weight_decay):
    mean, std = train_feats.float().mean(0), train_feats.float().std(0)
    dead = std <= 1e-6
    std = torch.where(dead, torch.ones_like(std), std)
    x, xt = (train_feats.float() - mean) / std, (test_feats.float() - mean) / std
    x[:, dead], xt[:, dead] = 0.0, 0.0
    head = torch.nn.Linear(x.shape[1], out_dim, device=x.device)  # where the features are (`evaluate_frozen`: the GPU)
    opt = torch.optim.LBFGS(head.parameters(), lr=lr, max_iter=epochs, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn(head(x), targets) + weight_decay * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return head(xt)


def linear_probe(train_feats, train_labels, test_feats, num_classes: int | None = None, epochs: int = 100,
                 lr: float = 0.1, weight_decay: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """A logistic-regression head on standardized frozen features (full-batch L-BFGS); returns test scores."""
    c = num_classes or int(train_labels.max()) + 1
    return _fit_linear(train_feats, train_labels, test_feats, c, F.cross_entropy, epochs, lr, weight_decay, seed)


def multilabel_linear_probe(train_feats, train_targets, test_feats, epochs: int = 100, lr: float = 0.1,
                            weight_decay: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """One logistic regression per label (binary cross-entropy, full-batch L-BFGS) on standardized frozen
    features, for "which of these are present" tasks; `train_targets` is `(N, C)` 0/1. Returns test logits."""
    return _fit_linear(train_feats, train_targets.float(), test_feats, train_targets.shape[1],
                       F.binary_cross_entropy_with_logits, epochs, lr, weight_decay, seed)


def multilabel_scores(logits: torch.Tensor, targets: torch.Tensor) -> dict:
    """Macro mean average precision (torchmetrics) over the labels present in `targets`, and exact-set accuracy at
    probability 0.5. A label with no positive has no precision to average: scikit-learn (checked with 1.9) and
    torchmetrics count it as 0, which would lower the mean by the share of labels the test set happens to lack."""
    from torchmetrics.functional.classification import binary_average_precision

    targets = targets.long()
    present = targets.any(0)
    if not present.any():
        raise ValueError("no label has a positive example: average precision is undefined")
    # AP reads only the order of the scores, so each label's logits go in as their ranks scaled into [0, 1]: a
    # float32 sigmoid rounds every logit above ~17 to 1.0, tying a confident negative with the positives below
    # it (and torchmetrics applies one itself to scores outside [0, 1]). One label at a time: its multilabel AP
    # refuses a single label.
    per_label = []
    for j in present.nonzero().flatten().tolist():
        ranks = torch.unique(logits[:, j].float(), return_inverse=True)[1].float()
        per_label.append(float(binary_average_precision(ranks / ranks.max().clamp(min=1), targets[:, j])))
    return {"map": sum(per_label) / len(per_label),
            "exact_set_accuracy": float(((logits > 0).long() == targets).all(1).float().mean())}


@torch.no_grad()
def extract_features(backbone, dataset, transform, batch_size: int = 256, device=None, image_column: str = "image",
                     label_column: str = "label", num_workers: int = 0,
                     decode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Global-average-pooled `forward_features` of every image (a ViT's class token), with labels, batched, with a
    progress bar. `transform` (torchvision v2) takes a PIL image or a uint8 CHW tensor.

    `decode`: "pil" decodes in the loader (CPU); "torchvision" hands the encoded bytes to the device and decodes
    there (`torchvision.io.decode_jpeg` batched on CUDA; other formats on the CPU), resizing and cropping on the
    device too: CPU decoding (~1.6 ms per 512² JPEG per core) cannot feed a GPU. "auto": torchvision on CUDA when
    the dataset is a `datasets` one with an image column, else pil."""
    from tqdm.auto import tqdm

    from ..devices import resolve_device

    device = resolve_device(device)
    backbone = backbone.to(device).eval()
    if decode == "auto":
        decode = "torchvision" if device.type == "cuda" and hasattr(dataset, "cast_column") else "pil"
    if decode not in ("pil", "torchvision"):
        raise ValueError(f"decode must be auto, pil or torchvision, got {decode!r}")
    if decode == "torchvision":
        from datasets import Image

        dataset = dataset.cast_column(image_column, Image(decode=False))

        def collate(rows):
            return [_encoded(r[image_column]) for r in rows], torch.tensor([r[label_column] for r in rows])
    else:
        def collate(rows):
            return (torch.stack([transform(rgb(r[image_column])) for r in rows]),
                    torch.tensor([r[label_column] for r in rows]))

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers)
    feats, labels = [], []
    for x, y in tqdm(loader, desc="features"):
        if decode == "torchvision":
            x = torch.stack([transform(img) for img in decode_images(x, device)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            f = backbone.forward_features(x.to(device, non_blocking=True))
        feats.append((f.mean((2, 3)) if f.ndim == 4 else f[:, 0]).float().cpu())
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def _encoded(value) -> torch.Tensor:
    """The encoded bytes of a `datasets.Image(decode=False)` value (bytes, or a file path)."""
    data = value.get("bytes")
    if data is None:
        with open(value["path"], "rb") as f:
            data = f.read()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def decode_images(encoded: list[torch.Tensor], device) -> list[torch.Tensor]:
    """uint8 RGB CHW images on `device`, in order, as the PIL path sees them (`datasets` applies the EXIF
    orientation): JPEGs in one batched `decode_jpeg` call there (nvJPEG on CUDA), but for those with an EXIF
    rotation, which only the CPU decoder applies; anything else (PNG, …) decoded on the CPU and moved, and formats
    torchvision does not read (BMP, TIFF, …) through PIL."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    out: list[torch.Tensor | None] = [None] * len(encoded)
    jpeg = [i for i, b in enumerate(encoded)
            if len(b) > 2 and b[0] == 0xFF and b[1] == 0xD8 and _exif_orientation(b) == 1]
    if jpeg:
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, img in zip(jpeg, decoded):
            out[i] = img
    for i, b in enumerate(encoded):
        if out[i] is None:
            try:
                img = decode_image(b, mode=ImageReadMode.RGB, apply_exif_orientation=True)
            except RuntimeError:  # a format torchvision does not decode
                img = _pil_decode(b)
            out[i] = img.to(device)
    return out


def _exif_orientation(data: torch.Tensor) -> int:
    """The EXIF orientation tag (1: as stored), read from the header alone."""
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
            return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - unreadable here: the decoder names the problem
        return 1


def _pil_decode(data: torch.Tensor) -> torch.Tensor:
    import io

    from PIL import Image, ImageOps
    from torchvision.transforms.v2.functional import pil_to_tensor

    with Image.open(io.BytesIO(data.numpy().tobytes())) as im:
        return pil_to_tensor(rgb(ImageOps.exif_transpose(im)))
