"""Scene prompts over a label space: "[class] with [other class] is [doing something] [somewhere]".

Prompt `i` depends only on `(seed, i)`, never on how many prompts were drawn before it, so a prompt list
splits across processes and resumes after a crash without changing a single prompt.
"""

import random
from dataclasses import dataclass

from .label_space import LabelClass, LabelSpace
from .prompt import Prompt, PromptObject

MODES = ("scene", "photo")

# What a thing of each subgroup plausibly does, and where. Verbs read after "is".
ACTIVITIES = {
    "dog": ["running", "sitting", "playing", "sleeping", "jumping", "lying"],
    "mammal": ["standing", "walking", "resting", "eating", "sitting"],
    "bird": ["perched", "standing", "flying", "resting"],
    "fish": ["swimming"],
    "sea creature": ["swimming", "resting", "floating"],
    "reptile": ["resting", "crawling", "basking"],
    "insect": ["resting", "crawling", "sitting"],
    "person": ["standing", "smiling", "posing", "walking"],
    "land": ["parked", "driving"],
    "watercraft": ["sailing", "floating", "anchored"],
    "aircraft": ["flying"],
    "object": ["lying", "placed", "standing"],
    "food": ["served", "placed"],
    "plant": ["growing"],
    "scene": ["seen"],
}
PLACES = {
    "dog": ["in a park", "on a beach", "in a living room", "on a lawn", "in the snow", "on a sidewalk"],
    "mammal": ["in a forest", "in a field", "on a hillside", "in a zoo", "near a river", "in the grass"],
    "bird": ["on a branch", "in a garden", "near a lake", "on a fence", "in the sky"],
    "fish": ["in an aquarium", "in the ocean", "in a pond", "near a coral reef"],
    "sea creature": ["in the ocean", "on the sea floor", "in an aquarium", "in a tide pool"],
    "reptile": ["on a rock", "in the desert", "in the grass", "near a pond"],
    "insect": ["on a leaf", "on a flower", "on the ground", "on a log"],
    "person": ["in a city street", "in a park", "in a stadium", "on a beach"],
    "land": ["on a city street", "in a parking lot", "on a country road", "in front of a house"],
    "watercraft": ["on a lake", "in a harbor", "on the open sea", "near the shore"],
    "aircraft": ["in the sky", "above the clouds", "over the mountains", "over the sea"],
    "object": ["on a wooden table", "on the floor", "on a shelf", "in a kitchen", "in an office"],
    "food": ["on a wooden table", "in a restaurant", "in a kitchen", "on a picnic blanket"],
    "plant": ["in a garden", "in a meadow", "in a forest", "in a field"],
    "scene": ["on a sunny day", "at sunset", "in the morning fog", "under a cloudy sky"],
}
# Which groups a class of each group is paired with (weights), for realistic co-occurrence.
COMPANIONS = {
    "animal": {"object": 3, "person": 2, "animal": 2, "food": 1, "plant": 1},
    "person": {"object": 3, "vehicle": 2, "animal": 2, "food": 1},
    "vehicle": {"person": 2, "animal": 1, "object": 2, "vehicle": 1},
    "object": {"object": 3, "food": 1, "animal": 2, "person": 1},
    "food": {"object": 2, "food": 2},
    "plant": {"animal": 2, "object": 1, "plant": 1},
    "scene": {"animal": 2, "vehicle": 1, "person": 1, "object": 1},
}


def article(noun: str) -> str:
    """By sound, not letter: "a unicycle", "a European ...", "an hourglass"."""
    word = noun.lower()
    if word.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if word.startswith(("uni", "eu", "one", "use", "usu", "uran", "ure", "uti")):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


@dataclass
class ScenePrompts:
    """Deterministic prompt source over a label space.

    Args:
        label_space (`LabelSpace`, *optional*): defaults to ImageNet-1k.
        mode (`str`, *optional*, defaults to `"scene"`): `"scene"` for multi-object scene prompts,
            `"photo"` for the paper's base mode "a photo of a [class]".
        num_objects (`int`, *optional*, defaults to 2): objects per scene prompt, 1–3.
        seed (`int`, *optional*, defaults to 0).
    """

    label_space: LabelSpace | None = None
    mode: str = "scene"
    num_objects: int = 2
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if not 1 <= self.num_objects <= 3:
            raise ValueError(f"num_objects must be 1, 2 or 3, got {self.num_objects}")
        self.label_space = self.label_space or LabelSpace.imagenet()
        unknown = sorted({c.subgroup for c in self.label_space.classes} - set(ACTIVITIES))
        if self.mode == "scene" and unknown:
            # The templates draw an activity and a place by subgroup: found out at the first prompt otherwise.
            raise ValueError(f"the scene templates know no subgroup {unknown}; use one of {sorted(ACTIVITIES)} "
                             "(or mode='photo')")
        # One pass over the classes per len(label_space) prompts, in a seeded order: equal images per class.
        self._order = list(range(len(self.label_space)))
        random.Random(self.seed).shuffle(self._order)
        self._by_group = {}
        for c in self.label_space.classes:
            self._by_group.setdefault(c.group, []).append(c)

    def __getitem__(self, i: int) -> Prompt:
        rng = random.Random(f"{self.seed}:{i}")
        main = self.label_space[self._order[i % len(self._order)]]
        if self.mode == "photo":
            return _compose([f"a photo of {article(main.name)} ", main], main.id)
        others = [self._companion(main, rng) for _ in range(self.num_objects - 1)]
        others = [o for o in others if o is not None]
        if main.group == "scene":
            # The scene class is the setting; the companions carry the action.
            lead = others[0] if others else main
            parts = [article(lead.name) + " ", lead]
            parts += _with_list(others[1:])
            parts += [f" is {rng.choice(ACTIVITIES[lead.subgroup])} "]
            parts += ([f"in front of {article(main.name)} ", main] if others else [rng.choice(PLACES["scene"])])
            return _compose(parts, main.id)
        parts = [article(main.name) + " ", main] + _with_list(others)
        parts += [f" is {rng.choice(ACTIVITIES[main.subgroup])} {rng.choice(PLACES[main.subgroup])}"]
        return _compose(parts, main.id)

    def __len__(self) -> int:
        return len(self._order)

    def take(self, n: int, start: int = 0) -> list[Prompt]:
        return [self[i] for i in range(start, start + n)]

    def _companion(self, main: LabelClass, rng: random.Random) -> LabelClass | None:
        weights = {g: w for g, w in COMPANIONS[main.group].items() if self._by_group.get(g)}
        if not weights:
            pool = [c for c in self.label_space.classes if c.id != main.id]
            return rng.choice(pool) if pool else None
        group = rng.choices(list(weights), weights=list(weights.values()))[0]
        pool = [c for c in self._by_group[group] if c.id != main.id] or self._by_group[group]
        return rng.choice(pool)


def _with_list(others: list[LabelClass]) -> list:
    if not others:
        return []
    parts: list = [" with "]
    for j, o in enumerate(others):
        if j:
            parts.append(" and ")
        parts += [article(o.name) + " ", o]
    return parts


def _compose(parts: list, label: int) -> Prompt:
    """Join strings and classes, recording each class's character span as a tracked object."""
    text, objects = "", []
    for p in parts:
        if isinstance(p, LabelClass):
            objects.append(PromptObject(p.name, len(text), len(text) + len(p.name), p.id))
            text += p.name
        else:
            text += p
    return Prompt(text, tuple(objects), label)
