"""The shapes world: procedural multi-object scenes with exact visible masks and a caption naming every object.

Scene `i` of a world depends only on `(seed, i)`. Rendering is batched on tensors: every object's
inside-test is evaluated on a 2×-supersampled grid, objects are painted back to front (later ones occlude
earlier ones), and the image is the 2×2 average (anti-aliased edges) while a pixel belongs to an object's
visible mask when most of its four sub-samples do (the front one on a tie).

Each scene has 1–4 objects of distinct colours (so "the red one" is unambiguous, in the caption and for
the colour segmenter that judges generated images), several shapes and sizes, random rotation, limited
overlap, on a low-saturation background: plain, striped, checkered or gradient.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross")
COLORS = {
    "red": (220, 30, 35), "green": (35, 170, 50), "blue": (35, 70, 220),
    "yellow": (240, 215, 30), "purple": (140, 45, 185), "orange": (250, 130, 20),
}
SIZES = {"small": (0.10, 0.14), "medium": (0.16, 0.20), "large": (0.23, 0.28)}  # radius / image side
BACKGROUNDS = ("plain", "striped", "checkered", "gradient")
# What a shapes caption tracks ("red circle"): the only object names the shapes model's text encoder was trained on.
OBJECT_NAMES = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
# Low-saturation background tones: far in hue/saturation from every object colour.
BG_TONES = [(200, 200, 200), (120, 120, 120), (215, 205, 185), (170, 180, 190), (90, 95, 100), (235, 235, 230)]


def unknown_objects(names) -> list[str]:
    """The names the shapes model's text encoder never learned. Its tokenizer lowercases and collapses whitespace,
    so "Red Circle" is the "red circle" it knows."""
    known = set(OBJECT_NAMES)
    return [n for n in names if " ".join(n.lower().split()) not in known]


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str
    size: str
    cx: float  # centre, fraction of width
    cy: float  # centre, fraction of height
    radius: float  # fraction of the image side
    angle: float  # radians

    @property
    def phrase(self) -> str:
        """How the caption names it: "red circle", "small blue star"."""
        return f"{self.color} {self.shape}" if self.size == "medium" else f"{self.size} {self.color} {self.shape}"

    @property
    def name(self) -> str:
        """The tracked noun phrase (colour + shape): unique within a scene."""
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str
    bg_colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    bg_param: float  # stripe angle / gradient direction, in [0, π) (checkers do not use it)

    @property
    def caption(self) -> str:
        listed = enumerate_phrases([with_article(o.phrase) for o in self.objects])
        bg = {"plain": "a plain", "striped": "a striped", "checkered": "a checkered", "gradient": "a gradient"}
        return f"{listed} on {bg[self.background]} background"


    def prompt(self):
        """The caption as a generator prompt: each object's "colour shape" tracked, labelled by its shape."""
        from ..prompts import Prompt

        labels = [SHAPES.index(o.shape) for o in self.objects]
        return Prompt.from_nouns(self.caption, [o.name for o in self.objects], label=labels[0], labels=labels)


def with_article(phrase: str) -> str:
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def enumerate_phrases(parts: list[str]) -> str:
    """"x", "x and y", "x, y and z"."""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


class ShapesWorld:
    """Args:
    size (`int`, defaults to 64): image side in pixels.
    min_objects, max_objects (`int`, defaults to 1 and 4).
    max_overlap (`float`, defaults to 0.15): largest share of a smaller object's disc another may cover; an
        object that finds no such place in 100 draws is left out (a few scenes in 10,000 at the defaults), so a
        scene may hold fewer than `min_objects` (never none).
    seed (`int`, defaults to 0).
    """

    def __init__(self, size: int = 64, min_objects: int = 1, max_objects: int = 4, max_overlap: float = 0.15,
                 seed: int = 0):
        if not 1 <= min_objects <= max_objects <= len(COLORS):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(COLORS)}")
        # Checked here, by name: a size of 0 rendered empty images without a word, and a negative seed failed only
        # at the first scene, inside numpy ("expected non-negative integer").
        if size < 1:
            raise ValueError(f"size {size}: an image side of at least 1 pixel")
        if seed < 0:
            raise ValueError(f"seed {seed}: a world seed is 0 or more")
        self.size, self.min_objects, self.max_objects = size, min_objects, max_objects
        self.max_overlap, self.seed = max_overlap, seed

    def scene(self, i: int) -> SceneSpec:
        rng = np.random.default_rng([self.seed, i])
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        colors = rng.choice(list(COLORS), size=n, replace=False)
        objects: list[ObjectSpec] = []
        for color in colors:
            for _ in range(100):  # rejection sampling of a place with limited overlap
                size = str(rng.choice(list(SIZES)))
                r = float(rng.uniform(*SIZES[size]))
                cx, cy = (float(v) for v in rng.uniform(r, 1 - r, size=2))
                if all(_disc_overlap((cx, cy, r), (o.cx, o.cy, o.radius)) <= self.max_overlap for o in objects):
                    break
            else:  # no room left: the object is left out rather than placed over the others (the caption follows)
                continue
            objects.append(ObjectSpec(str(rng.choice(SHAPES)), str(color), size, cx, cy, r,
                                      float(rng.uniform(0, 2 * math.pi))))
        tones = rng.choice(len(BG_TONES), size=2, replace=False)
        return SceneSpec(tuple(objects), str(rng.choice(BACKGROUNDS)),
                         (BG_TONES[tones[0]], BG_TONES[tones[1]]), float(rng.uniform(0, math.pi)))

    def scenes(self, n: int, start: int = 0) -> list[SceneSpec]:
        return [self.scene(i) for i in range(start, start + n)]

    def render(self, specs: list[SceneSpec], device="cpu") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`(images uint8 (B, H, W, 3), [visible masks bool (K_b, H, W) per scene])` on `device`."""
        return render(specs, self.size, device=device)


class ShapesPrompts:
    """Captions of a world's scenes as generator prompts (each object's "colour shape" tracked); prompt `i`
    is scene `i`, and its label the first object's shape (an index into `SHAPES`)."""

    label_names = list(SHAPES)

    def __init__(self, world: ShapesWorld):
        self.world = world

    def __len__(self) -> int:
        return 2**31  # endless: scene i exists for every i

    def __getitem__(self, i: int):
        return self.world.scene(i).prompt()


def _disc_overlap(a, b) -> float:
    """Share of the smaller disc's radius covered by the other disc (0 = apart, 1 = fully inside)."""
    (x1, y1, r1), (x2, y2, r2) = a, b
    d = math.hypot(x1 - x2, y1 - y2)
    return max(0.0, (r1 + r2 - d) / (2 * min(r1, r2)))


def _inside(shape: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Inside-test in the object's own frame, unit radius."""
    if shape == "circle":
        return x * x + y * y <= 1.0
    if shape == "square":
        return torch.maximum(x.abs(), y.abs()) <= 0.7  # corners at radius 0.99
    if shape == "triangle":  # equilateral, circumradius 1, pointing up
        return (y <= 0.5) & (math.sqrt(3) * x - y <= 1.0) & (-math.sqrt(3) * x - y <= 1.0)
    if shape == "hexagon":
        c = math.cos(math.pi / 6)
        return ((x.abs() <= c) & ((0.5 * x.abs() + c * y.abs()) <= c))
    if shape == "cross":
        return ((x.abs() <= 0.3) & (y.abs() <= 0.95)) | ((y.abs() <= 0.3) & (x.abs() <= 0.95))
    if shape == "star":  # five points at radius 1, inner vertices at radius 0.45
        a = math.pi / 5  # angle between an inner and the next outer vertex
        phi = ((torch.atan2(x, y) % (2 * a)) - a).abs()  # angle from the nearest inner vertex
        ri, ro = 0.45, 1.0
        dx, dy = ro * math.cos(a) - ri, ro * math.sin(a)
        # The ray at angle phi meets the edge (ri, 0) → (ro·cos a, ro·sin a) at this radius.
        edge = ri * dy / (torch.cos(phi) * dy - torch.sin(phi) * dx)
        return x * x + y * y <= edge * edge
    raise ValueError(f"unknown shape {shape!r}")


def render(specs: list[SceneSpec], size: int = 64, supersample: int = 2,
           device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Render a batch at once: every object of every scene is one slice of a `(B, K, S, S)` tensor."""
    if not specs:  # the backgrounds' per-scene tensors cannot be built from no scene
        return torch.zeros(0, size, size, 3, dtype=torch.uint8, device=device), []
    b, k_max, s = len(specs), max([len(sp.objects) for sp in specs] + [1]), size * supersample
    params = torch.zeros(b, k_max, 5)  # cx, cy, radius, angle, shape id
    colors = torch.zeros(b, k_max, 3)
    valid = torch.zeros(b, k_max, dtype=torch.bool)
    for i, sp in enumerate(specs):
        for k, o in enumerate(sp.objects):
            params[i, k] = torch.tensor([o.cx, o.cy, o.radius, o.angle, SHAPES.index(o.shape)])
            colors[i, k] = torch.tensor(COLORS[o.color], dtype=torch.float32)
            valid[i, k] = True
    params, colors, valid = params.to(device), colors.to(device), valid.to(device)
    coords = (torch.arange(s, dtype=torch.float32, device=device) + 0.5) / s
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cx, cy, r, angle, shape_id = (params[..., j, None, None] for j in range(5))
    dx, dy = (xx - cx) / r, (yy - cy) / r
    c, sn = torch.cos(angle), torch.sin(angle)
    x, y = c * dx + sn * dy, -sn * dx + c * dy
    inside = torch.zeros(b, k_max, s, s, dtype=torch.bool, device=device)
    for j, shape in enumerate(SHAPES):
        inside |= (shape_id == j) & _inside(shape, x, y)
    inside &= valid[..., None, None]
    # Painted back to front: a pixel belongs to the last object covering it.
    order = torch.arange(1, k_max + 1, device=device).view(1, k_max, 1, 1)
    owner = (inside * order).amax(1) - 1  # (B, S, S), -1 = background
    canvas = _backgrounds(specs, xx, yy)
    obj_color = torch.gather(colors, 1, owner.clamp(min=0).view(b, -1, 1).expand(-1, -1, 3)).view(b, s, s, 3)
    canvas = torch.where((owner >= 0)[..., None], obj_color, canvas)
    images = canvas.view(b, size, supersample, size, supersample, 3).mean((2, 4)).round().clamp(0, 255).to(torch.uint8)
    onehot = (owner[:, None] == torch.arange(k_max, device=device).view(1, k_max, 1, 1)).float()
    cover = onehot.view(b, k_max, size, supersample, size, supersample).mean((3, 5))
    # A pixel is an object's when most of its sub-samples are; on a 2-2 tie the front object wins.
    front = (cover + 1e-3 * torch.arange(k_max, device=device).view(1, k_max, 1, 1)).argmax(1, keepdim=True)
    visible = (cover >= 0.5) & (torch.arange(k_max, device=device).view(1, k_max, 1, 1) == front)
    return images, [visible[i, : len(sp.objects)] for i, sp in enumerate(specs)]


def _backgrounds(specs: list[SceneSpec], xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    a = torch.tensor([sp.bg_colors[0] for sp in specs], dtype=torch.float32, device=xx.device)[:, None, None]
    b = torch.tensor([sp.bg_colors[1] for sp in specs], dtype=torch.float32, device=xx.device)[:, None, None]
    p = torch.tensor([sp.bg_param for sp in specs], dtype=torch.float32, device=xx.device)[:, None, None]
    kind = torch.tensor([BACKGROUNDS.index(sp.background) for sp in specs], device=xx.device)[:, None, None]
    u = xx * torch.cos(p) + yy * torch.sin(p)
    # u spans the projection of the image on the direction, not [0, 1]: a gradient is flat at the first tone where
    # u < 0 (past π/2: half the gradient scenes, for a few the whole image) and at the second where u > 1 (a corner
    # below π/2). Normalising u per scene would fix it, but the shipped model was trained on these renders and
    # every toy figure measured on them: it waits for the next model.
    t = torch.where(kind == 0, torch.zeros_like(u), u.clamp(0, 1))
    t = torch.where(kind == 1, ((u * 8) % 1.0 < 0.5).float(), t)
    t = torch.where(kind == 2, (((xx * 6).floor() + (yy * 6).floor()) % 2).float().expand_as(u), t)
    return a * (1 - t[..., None]) + b * t[..., None]


def boxes(mask: torch.Tensor) -> list[float] | None:
    """`[x0, y0, x1, y1]` in pixels (cell borders) of a bool mask, None when empty."""
    if not mask.any():
        return None
    rows = torch.nonzero(mask.any(1)).flatten()
    cols = torch.nonzero(mask.any(0)).flatten()
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
