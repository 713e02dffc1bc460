"""Judging a picture of the shapes world without knowing how it was made.

- `colour_masks`: which pixels show each palette colour (a colour segmenter). On rendered scenes its masks
  are checked against the exact ones; that IoU is the ceiling for scoring attention masks of generated
  images against it.
- `ShapeClassifier`: a small CNN that names the shape of a silhouette (trained on rendered silhouettes,
  occlusion included, and on the segmenter's silhouettes of softened renders, the path a generated picture
  takes; weights shipped in `assets/`).
- `judge_scene`: for each named object, was it drawn (its colour covers enough pixels), with the right
  shape, and which unrequested colours appear (extra objects).

    python -m freeatm_hf.toy.judge --output outputs/shape_classifier.safetensors   # retrain, report accuracy
    python -m freeatm_hf.toy.judge --replace_shipped   # the same, into the package (every mask figure's judge)
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .world import COLORS, SHAPES, ShapesWorld

ASSETS = Path(__file__).parent / "assets"
CLASSIFIER_FILE = ASSETS / "shape_classifier.safetensors"
MIN_CHROMA = 70  # object colours are saturated; every background tone has chroma <= 30
MAX_DISTANCE = 110.0  # RGB distance to the nearest palette colour
MIN_AREA = 0.004  # share of the image a colour must cover to count as a drawn object (17 px at 64²)
# ...and of pixels deep inside it (all 8 neighbours the same colour): where an object meets a light background, a
# 1-2 px strip of blended edge pixels reads as a neighbouring palette colour (orange on beige as yellow) and can be
# long enough to pass MIN_AREA; a drawn object, even a small one, has a core.
MIN_CORE = MIN_AREA / 4
CROP = 32
# Softened renders for the classifier: Gaussian blur up to this sigma (pixels of a 64² image) and pixel noise up to
# this std. A 4×-downsampling decoder softens edges about this much; sharp training silhouettes alone made the
# judge call 99 % of visibly intact stars something else once their points were soft.
SOFTEN_SIGMA = 1.5
SOFTEN_NOISE = 6.0

_PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32)
_NAMES = list(COLORS)


def colour_masks(image, min_component: int = 4) -> dict[str, np.ndarray]:
    """Bool mask per palette colour for an `(H, W, 3)` uint8 image: saturated pixels nearest that colour.

    Components smaller than `min_component` pixels are dropped: where two objects meet, blended edge pixels
    can look like a third colour (red next to yellow reads as orange).
    """
    from ..masks import connected_components

    x = torch.as_tensor(np.array(image, dtype=np.float32))
    chroma = x.max(-1).values - x.min(-1).values
    d = torch.cdist(x.view(-1, 3), _PALETTE).view(*x.shape[:2], len(_NAMES))
    dist, idx = d.min(-1)
    ok = (chroma >= MIN_CHROMA) & (dist <= MAX_DISTANCE)
    out = {}
    for k, name in enumerate(_NAMES):
        m = (ok & (idx == k)).numpy()
        if m.any():
            labels, n = connected_components(m)
            sizes = np.bincount(labels.ravel(), minlength=n + 1)
            m = np.isin(labels, np.flatnonzero(sizes >= min_component)) & m
        out[name] = m
    return out


def largest_component(mask: np.ndarray) -> np.ndarray:
    from ..masks import connected_components

    labels, n = connected_components(mask)
    if n <= 1:
        return mask
    return labels == (int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)


def silhouette(mask: np.ndarray, size: int = CROP) -> torch.Tensor:
    """The mask's bounding square (aspect kept), padded, resized to `size²`: the classifier's input."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return torch.zeros(1, size, size)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    half = max(ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()) / 2 * 1.15 + 1
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    h, w = mask.shape
    theta = torch.tensor([[[half / (w / 2), 0, (cx - w / 2) / (w / 2)], [0, half / (h / 2), (cy - h / 2) / (h / 2)]]],
                         dtype=torch.float32)
    grid = F.affine_grid(theta, (1, 1, size, size), align_corners=False)
    return F.grid_sample(t, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


class ShapeClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, len(SHAPES)),
        )

    def forward(self, x):
        return self.net(x)

    @classmethod
    def pretrained(cls) -> "ShapeClassifier":
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(CLASSIFIER_FILE)))
        return model.eval()

    @torch.no_grad()
    def predict(self, masks: list[np.ndarray]) -> list[str]:
        if not masks:
            return []
        logits = self(torch.stack([silhouette(largest_component(m)) for m in masks]))
        return [SHAPES[i] for i in logits.argmax(-1).tolist()]


def rendered_silhouettes(n_scenes: int, seed: int, min_visible: float = 0.0):
    """(silhouettes, labels) of every object of `n_scenes` rendered scenes from their exact masks, occlusion as
    rendered; with `min_visible`, only objects showing at least that share of their unoccluded area."""
    world = ShapesWorld(seed=seed)
    specs = world.scenes(n_scenes)
    _, masks = world.render(specs)
    xs, ys = [], []
    for spec, m, keep in zip(specs, masks, _visible(world, specs, masks, min_visible)):
        for k, o in enumerate(spec.objects):
            if keep[k] and m[k].any():
                xs.append(silhouette(m[k].numpy()))
                ys.append(SHAPES.index(o.shape))
    return torch.stack(xs), torch.tensor(ys)


def soften(images: torch.Tensor, seed: int, max_sigma: float = SOFTEN_SIGMA, max_noise: float = SOFTEN_NOISE):
    """`(B, H, W, 3)` uint8 renders, each blurred with a Gaussian of sigma ~ U(0, max_sigma) px and given pixel
    noise of std ~ U(0, max_noise): soft edges like a generator's, without being any particular decoder."""
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images.permute(0, 3, 1, 2).float():
        sigma = float(torch.rand((), generator=g)) * max_sigma
        if sigma > 0.1:
            k = 2 * math.ceil(3 * sigma) + 1
            img = TF.gaussian_blur(img, [k, k], [sigma, sigma])
        img = img + torch.randn(img.shape, generator=g) * float(torch.rand((), generator=g)) * max_noise
        out.append(img)
    return torch.stack(out).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def judged_silhouettes(n_scenes: int, seed: int, min_visible: float = 0.0, max_sigma: float = SOFTEN_SIGMA):
    """(silhouettes, labels) the way `judge_scene` sees objects: softened renders (`soften`), the colour
    segmenter's mask of each object's colour, its largest component. Objects the segmenter misses are skipped
    (the judge calls them undrawn, never asks their shape)."""
    world = ShapesWorld(seed=seed)
    specs = world.scenes(n_scenes)
    images, masks = world.render(specs)
    images = soften(images, seed, max_sigma=max_sigma)
    xs, ys = [], []
    for spec, img, keep in zip(specs, images.numpy(), _visible(world, specs, masks, min_visible)):
        found = colour_masks(img)
        for k, o in enumerate(spec.objects):
            m = found[o.color]
            if keep[k] and m.mean() >= MIN_AREA:
                xs.append(silhouette(largest_component(m)))
                ys.append(SHAPES.index(o.shape))
    return torch.stack(xs), torch.tensor(ys)


def _visible(world, specs, masks, min_visible: float) -> list[list[bool]]:
    if min_visible <= 0:
        return [[True] * len(s.objects) for s in specs]
    keep = []
    for spec, m in zip(specs, masks):
        alone = world.render([type(spec)((o,), spec.background, spec.bg_colors, spec.bg_param) for o in spec.objects])[1]
        keep.append([bool(m[k].sum() >= min_visible * alone[k][0].sum()) for k in range(len(spec.objects))])
    return keep


def classifier_accuracy(model: ShapeClassifier, seed: int = 999_999, n_scenes: int = 300) -> dict[str, float]:
    """Accuracy on held-out objects (>= 70 % visible): exact silhouettes of sharp renders, and the segmenter's
    silhouettes of softened renders (what the judge meets in generated pictures)."""
    out = {}
    with torch.no_grad():
        for name, (x, y) in {"rendered": rendered_silhouettes(n_scenes, seed, min_visible=0.7),
                             "softened": judged_silhouettes(n_scenes, seed + 1, min_visible=0.7)}.items():
            out[name] = round((model(x).argmax(-1) == y).float().mean().item(), 4)
    return out


def train_classifier(steps: int = 2500, seed: int = 0) -> tuple[ShapeClassifier, dict[str, float]]:
    torch.manual_seed(seed)
    xa, ya = rendered_silhouettes(3000, seed=1000 + seed)
    xb, yb = judged_silhouettes(5000, seed=2000 + seed)
    x, y = torch.cat([xa, xb]), torch.cat([ya, yb])
    model = ShapeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    for _ in range(steps):
        i = torch.randint(0, len(x), (256,))
        xb = x[i]
        if torch.rand(()) < 0.5:
            xb = (xb + 0.15 * torch.randn_like(xb)).clamp(0, 1)
        loss = F.cross_entropy(model(xb), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval(), classifier_accuracy(model.eval())


@dataclass
class ObjectJudgement:
    name: str
    drawn: bool
    shape_ok: bool
    predicted_shape: str | None
    mask: np.ndarray  # the colour segmenter's mask for this object's colour


def core_share(mask: np.ndarray) -> float:
    """Share of the image covered by the mask's pixels whose 8 neighbours are in it too (outside the image counts
    as in it, so an object at the border keeps its core)."""
    t = torch.as_tensor(mask, dtype=torch.float32)[None, None]
    return float((-F.max_pool2d(-t, 3, stride=1, padding=1)).mean())


def judge_scene(image, objects: list[tuple[str, str]], classifier: ShapeClassifier | None = None,
                min_area: float = MIN_AREA, min_core: float = MIN_CORE):
    """`objects` are (colour, shape) pairs named by the caption. Returns (judgements, extra colours). A colour
    counts as drawn when it covers `min_area` of the image with a core (see `MIN_CORE`) of `min_core`."""
    masks = colour_masks(image)
    present = {c: bool(m.mean() >= min_area and core_share(m) >= min_core) for c, m in masks.items()}
    drawn = [(c, s) for c, s in objects if present[c]]
    preds = dict(zip([c for c, _ in drawn], classifier.predict([masks[c] for c, _ in drawn]) if classifier else []))
    judgements = [ObjectJudgement(f"{c} {s}", present[c], preds.get(c) == s, preds.get(c), masks[c])
                  for c, s in objects]
    requested = {c for c, _ in objects}
    extra = [c for c in COLORS if c not in requested and present[c]]
    return judgements, extra


def main(argv=None):
    import argparse

    from safetensors.torch import save_file

    from ..cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="python -m freeatm_hf.toy.judge", formatter_class=HelpFormatter,
                                     description="Retrain the shape classifier and report its held-out accuracy.")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--output", help="Where to save the weights (a .safetensors file).")
    where.add_argument("--replace_shipped", action="store_true",
                       help=f"Overwrite the package's own {CLASSIFIER_FILE.name}, the judge behind every shipped "
                            "mask-quality figure.")
    args = parser.parse_args(argv)
    out = CLASSIFIER_FILE if args.replace_shipped else Path(args.output)
    model, acc = train_classifier()
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(f"shape classifier on held-out objects (>= 70 % visible): {acc['rendered'] * 100:.2f} % sharp (exact masks), "
          f"{acc['softened'] * 100:.2f} % softened (segmenter masks); saved {out}")


if __name__ == "__main__":
    main()
