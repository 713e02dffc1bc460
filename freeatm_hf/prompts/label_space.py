"""The ImageNet-1k label space with a coarse hierarchy (group → subgroup), shipped as data."""

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

LABEL_SPACE_FILE = Path(__file__).with_name("imagenet_label_space.json")
GROUPS = ("animal", "person", "vehicle", "object", "food", "plant", "scene")
# The shipped names' version, recorded in a generated dataset's settings: scene and photo prompts say each class by
# its name, so a folder begun with other names is not resumed with these. 2: no two classes named alike. 3: no
# name that draws explicit content or another thing (rooster, mop, plaque, airplane wing, ...).
LABEL_SPACE_VERSION = 3


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    group: str
    subgroup: str
    synset: str = ""
    synonyms: tuple[str, ...] = ()


class LabelSpace:
    """An ordered list of classes; `label_space.names` is what a `ClassLabel` feature takes."""

    def __init__(self, classes: list[LabelClass]):
        if [c.id for c in classes] != list(range(len(classes))):
            raise ValueError("label space ids must be 0..N-1 in order")
        unknown = {c.group for c in classes} - set(GROUPS)
        if unknown:
            raise ValueError(f"unknown groups {sorted(unknown)}; expected a subset of {GROUPS}")
        self.classes = classes

    @classmethod
    def imagenet(cls) -> "LabelSpace":
        return _imagenet()

    @classmethod
    def from_names(cls, names: list[str], group: str = "object") -> "LabelSpace":
        """A flat label space (every class in one group), e.g. for a custom list of nouns. Groups that the scene
        templates only know by subgroup take a typical one (animal: mammal, vehicle: land)."""
        subgroup = {"animal": "mammal", "vehicle": "land"}.get(group, group)
        return cls([LabelClass(i, n, group, subgroup) for i, n in enumerate(names)])

    @property
    def names(self) -> list[str]:
        """Unique class names (what a `ClassLabel` needs): a name used twice gets its synset appended (else its
        id), e.g. two "crane"s (bird, machine) would be "crane (n02012849)" and "crane (n03126707)"."""
        counts: dict[str, int] = {}
        for c in self.classes:
            counts[c.name] = counts.get(c.name, 0) + 1
        return [f"{c.name} ({c.synset or c.id})" if counts[c.name] > 1 else c.name for c in self.classes]

    @property
    def vocabulary(self) -> list[str]:
        """Every way the label space names a class: each name, then its synonyms, in class order."""
        return [n for c in self.classes for n in (c.name, *c.synonyms)]

    def __len__(self) -> int:
        return len(self.classes)

    def __getitem__(self, i: int) -> LabelClass:
        return self.classes[i]

    def in_group(self, group: str) -> list[LabelClass]:
        return [c for c in self.classes if c.group == group]


@cache
def _imagenet() -> LabelSpace:
    rows = json.loads(LABEL_SPACE_FILE.read_text())
    return LabelSpace([LabelClass(r["id"], r["name"], r["group"], r["subgroup"], r["synset"],
                                  tuple(r["synonyms"])) for r in rows])
