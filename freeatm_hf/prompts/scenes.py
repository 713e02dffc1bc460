"""Scene prompts over a label space: "[class] with [other class] is [doing something] [somewhere]".

Prompt `i` depends only on `(seed, i)`, never on how many prompts were drawn before it, so a prompt list
splits across processes and resumes after a crash without changing a single prompt.
"""

import random
from dataclasses import dataclass

from .label_space import LabelClass, LabelSpace
from .prompt import Prompt, PromptObject

MODES = ("scene", "photo")
# The scene templates' version, recorded in a generated dataset's settings: a folder written with other templates
# is not resumed with these (its later rows would read otherwise than its first).
TEMPLATES_VERSION = 4
# Subgroups whose class is where the scene happens, not a thing in it: another class leads the sentence.
SETTINGS = ("scene", "structure")

# What a thing of each subgroup plausibly does, and where. Verbs read after "is" (and "are").
ACTIVITIES = {
    "dog": ["running", "sitting", "playing", "sleeping", "jumping", "lying"],
    "mammal": ["standing", "walking", "resting", "eating", "sitting"],
    "bird": ["perched", "standing", "flying", "resting"],
    "water bird": ["standing", "wading", "resting"],
    "ground bird": ["standing", "walking", "resting"],
    "fish": ["swimming"],
    "river fish": ["swimming"],
    "marine mammal": ["swimming", "diving", "surfacing"],
    "sea creature": ["crawling", "resting"],
    "coral": ["growing"],
    "reptile": ["resting", "crawling", "basking"],
    "insect": ["resting", "crawling", "sitting"],
    "person": ["standing", "smiling", "posing", "walking"],
    "diver": ["swimming", "diving"],
    "land": ["parked", "driving"],
    "rail": ["standing", "moving"],
    "cycle": ["parked", "standing"],
    "watercraft": ["sailing", "floating", "anchored"],
    "aircraft": ["flying"],
    "object": ["lying", "placed", "standing"],
    "street": ["standing"],
    "clothing": ["hanging", "lying", "displayed", "folded"],
    "accessory": ["lying", "displayed", "placed"],
    "kitchen": ["placed", "standing", "sitting"],
    "appliance": ["standing"],
    "furniture": ["standing", "placed"],
    "instrument": ["placed", "standing", "lying"],
    "electronics": ["placed", "lying", "sitting"],
    "tool": ["lying", "placed"],
    "sports": ["lying", "placed"],
    "office": ["lying", "placed"],
    "bathroom": ["standing", "placed"],
    "medical": ["lying", "placed", "standing"],
    "weapon": ["displayed", "lying", "placed"],
    "garden": ["standing", "placed"],
    "food": ["served", "placed"],
    "plant": ["growing"],
    "scene": ["seen"],
    "structure": ["seen"],
}
PLACES = {
    "dog": ["in a park", "on a beach", "in a living room", "on a lawn", "in the snow", "on a sidewalk"],
    "mammal": ["in a forest", "in a field", "on a hillside", "in a zoo", "near a river", "in the grass"],
    "bird": ["on a branch", "in a garden", "near a lake", "on a fence", "in the sky"],
    "water bird": ["near a lake", "in a marsh", "on a riverbank", "on a beach"],
    "ground bird": ["in a field", "in the grass", "on a farm", "in a meadow"],
    "fish": ["in an aquarium", "in the ocean", "near a coral reef", "in clear blue water"],
    "river fish": ["in a pond", "in a river", "in a lake", "in an aquarium"],
    "marine mammal": ["in the ocean", "in the open sea", "near the shore", "in a bay"],
    "sea creature": ["in the ocean", "on the sea floor", "in an aquarium", "in a tide pool"],
    "coral": ["near a coral reef", "on the sea floor", "in an aquarium", "in a tide pool"],
    "reptile": ["on a rock", "in the desert", "in the grass", "near a pond"],
    "insect": ["on a leaf", "on a flower", "on the ground", "on a log"],
    "person": ["in a city street", "in a park", "in a stadium", "on a beach"],
    "diver": ["in the ocean", "near a coral reef", "in clear blue water", "under the sea"],
    "land": ["on a city street", "in a parking lot", "on a country road", "in front of a house"],
    "rail": ["at a railway station", "on a railway track", "on a railway bridge", "in a rail yard"],
    "cycle": ["on a city street", "in front of a house", "on a bike path", "in a park"],
    "watercraft": ["on a lake", "in a harbor", "on the open sea", "near the shore"],
    "aircraft": ["in the sky", "above the clouds", "over the mountains", "over the sea"],
    "object": ["on a wooden table", "on the floor", "on a shelf", "in a kitchen", "in an office"],
    "street": ["on a city street", "by a country road", "in a town square", "next to a sidewalk"],
    "clothing": ["in a closet", "on a bed", "in a shop window", "on a chair"],
    "accessory": ["in a closet", "on a shelf", "in a shop window", "on a chair"],
    "kitchen": ["on a kitchen counter", "on a wooden table", "in a kitchen", "on a dining table"],
    "appliance": ["in a kitchen", "in a bright room", "in an appliance store", "in an old house"],
    "furniture": ["in a living room", "in a bright room", "in a furniture store", "in an old house"],
    "instrument": ["on a stage", "in a music studio", "in a concert hall", "in a music shop"],
    "electronics": ["on a desk", "in an office", "on a shelf", "in an electronics store"],
    "tool": ["in a workshop", "on a workbench", "in a garage", "in a garden shed"],
    "sports": ["on a playing field", "in a gym", "on a lawn", "in a sports store"],
    "office": ["on a desk", "in an office", "on a bookshelf", "in a classroom"],
    "bathroom": ["on a bathroom shelf", "on a dressing table", "in a bathroom", "next to a sink"],
    "medical": ["in a hospital room", "in a laboratory", "in a doctor's office", "on a medical cart"],
    "weapon": ["in a museum", "in an armory", "on a display stand", "on a wooden table"],
    "garden": ["in a garden", "in a backyard", "on a porch", "next to a fence"],
    "food": ["on a wooden table", "in a restaurant", "in a kitchen", "on a picnic blanket"],
    "plant": ["in a garden", "in a meadow", "in a forest", "in a field"],
    "scene": ["on a sunny day", "at sunset", "in the morning fog", "under a cloudy sky"],
    "structure": ["on a sunny day", "at dusk", "under a cloudy sky", "in the evening light"],
}
# Places an activity cannot happen in, whichever subgroup does it (activities and places are drawn by subgroup): a
# bird flies in the sky, not on a branch, and perches anywhere but in the sky; nothing floats on the sea floor.
NOT_WHERE = {
    "flying": {"on a branch", "on a fence"},
    "perched": {"in the sky"}, "standing": {"in the sky"}, "resting": {"in the sky"},
    "floating": {"on the sea floor"},
    "hanging": {"on a bed"},
}
# Places on something a thing is put on, which furniture and appliances, companions that stand where the main class
# is, do not fit on: "a Polaroid camera with a four-poster is lying on a shelf".
SURFACES = frozenset({
    "on a wooden table", "on a shelf", "on a chair", "on a bed", "on a desk", "on a kitchen counter", "on a dining table",
    "on a bookshelf", "on a workbench", "on a bathroom shelf", "on a dressing table", "on a medical cart",
    "on a display stand", "on a picnic blanket"})
BULKY = {"furniture", "appliance"}
# Activities that carry their doer along (through the air, down a road) or that the companions are seen doing too
# (hung, folded), and the subgroups that can: said only when every object of the prompt can, not of "a goldfinch
# with a hamster", "a moving van with a pole" or "a gown with a crash helmet is folded".
CARRIED = {"flying": {"bird", "aircraft"}, "driving": {"land", "person", "dog"}, "moving": {"rail", "person"},
           "hanging": {"clothing"}, "folded": {"clothing"}}


# Which subgroups a class of each subgroup is seen with (weights), for realistic co-occurrence: things found in
# the same place, so that the main class's place suits its companions too. A setting's companions are who is
# seen there; settings are never companions.
COMPANIONS = {
    "dog": {"sports": 3, "dog": 2, "person": 1},
    "mammal": {"mammal": 3, "bird": 1, "plant": 1},
    "bird": {"bird": 2, "plant": 1, "mammal": 1},
    "water bird": {"water bird": 1},
    "ground bird": {"ground bird": 2, "mammal": 1},
    "fish": {"fish": 2, "sea creature": 2, "coral": 1},
    "river fish": {"river fish": 1},
    "marine mammal": {"marine mammal": 2, "fish": 1},
    "sea creature": {"sea creature": 2, "fish": 2, "coral": 1},
    "coral": {"fish": 2, "sea creature": 1},
    "reptile": {"reptile": 1, "insect": 1, "plant": 1},
    "insect": {"plant": 2, "insect": 1},
    "person": {"sports": 2, "instrument": 2, "clothing": 1, "dog": 1, "electronics": 1},
    "diver": {"fish": 2, "sea creature": 2, "marine mammal": 1},
    "land": {"person": 2, "land": 2, "street": 2, "dog": 1},
    "rail": {"rail": 2, "person": 1},
    "cycle": {"person": 2, "cycle": 1, "dog": 1, "street": 1},
    "watercraft": {"watercraft": 2, "person": 1, "bird": 1},
    "aircraft": {"aircraft": 2, "bird": 1},
    "object": {"object": 2, "electronics": 1, "furniture": 1, "kitchen": 1, "tool": 1},
    "office": {"office": 3, "electronics": 1},
    "bathroom": {"bathroom": 1},
    "medical": {"medical": 1},
    "weapon": {"weapon": 1},
    "garden": {"garden": 2, "plant": 2, "bird": 1, "insect": 1},
    "street": {"street": 2, "land": 2, "person": 1},
    "clothing": {"clothing": 3, "accessory": 2, "furniture": 1},
    "accessory": {"accessory": 2, "clothing": 2, "furniture": 1},
    "kitchen": {"kitchen": 3, "food": 3, "appliance": 1},
    "appliance": {"appliance": 1, "kitchen": 2, "food": 1},
    "furniture": {"furniture": 3, "electronics": 1, "dog": 1},
    "instrument": {"instrument": 3, "person": 1, "furniture": 1},
    "electronics": {"electronics": 3, "furniture": 1, "office": 1},
    "tool": {"tool": 3, "object": 1},
    "sports": {"sports": 3, "person": 1, "dog": 1},
    "food": {"food": 2, "kitchen": 2},
    "plant": {"insect": 2, "bird": 1, "plant": 1},
    "scene": {"mammal": 2, "bird": 1, "person": 1, "land": 1, "watercraft": 1},
    "structure": {"person": 2, "dog": 2, "bird": 1, "land": 1},
}
# How a thing and its companions are put together (the first, the paper's, twice as often as each other; "and" only
# among things of one subgroup, which do alike), and where companions stand in a setting.
PATTERNS = ("with", "with", "and", "next to")
NEAR = ("in front of", "near", "next to")


def article(noun: str) -> str:
    """By sound, not letter: "a unicycle", "a European ...", "an hourglass"."""
    word = noun.lower()
    if word.startswith(("hour", "honest", "honor", "honour", "heir")):
        return "an"
    if word.startswith(("uni", "eu", "one", "use", "usu", "uran", "ure", "uti")):
        return "a"
    return "an" if word[:1] in "aeiou" else "a"


# Names of stuff rather than things, said without an article in a scene ("guacamole with a pretzel", not "a
# guacamole"); the photo prompts keep the paper's "a photo of a [class]".
MASS_NOUNS = frozenset({
    "guacamole", "consomme", "ice cream", "mashed potato", "broccoli", "cauliflower", "carbonara",
    "chocolate sauce", "dough", "red wine", "espresso", "eggnog", "rapeseed", "corn", "velvet", "wool",
    "face powder", "hair spray", "lotion", "sunscreen", "perfume", "toilet tissue", "chain mail", "coral fungus",
    "hen-of-the-woods"})


# Names of one thing in the plural form: "a pair of binoculars ... is", never "a binoculars".
PAIRS = frozenset({"binoculars", "parallel bars", "sunglasses", "swimming trunks", "jeans", "pajamas"})


def determiner(noun: str) -> str:
    """What goes before a name in a scene: "a ", "an ", "a pair of " (`PAIRS`), or nothing for stuff
    (`MASS_NOUNS`)."""
    if noun in PAIRS:
        return "a pair of "
    return "" if noun in MASS_NOUNS else article(noun) + " "


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
        self._by_subgroup = {}
        for c in self.label_space.classes:
            self._by_subgroup.setdefault(c.subgroup, []).append(c)

    def __getitem__(self, i: int) -> Prompt:
        rng = random.Random(f"{self.seed}:{i}")
        main = self.label_space[self._order[i % len(self._order)]]
        if self.mode == "photo":
            return _compose([f"a photo of {article(main.name)} ", main], main.id)
        others = []
        for _ in range(self.num_objects - 1):  # each another class: "a scuba diver with a scuba diver" said nothing
            # A setting's first companion leads the sentence; the rest are with it: "a dog with a tennis ball is
            # running near a castle", not "a dog with a garbage truck".
            by = others[0] if others and main.subgroup in SETTINGS else main
            other = self._companion(by, rng, {main.id, *(o.id for o in others)})
            if other is not None:
                others.append(other)
        if main.subgroup in SETTINGS:
            if not others:  # the setting alone: "a volcano is seen at sunset"
                return _compose([determiner(main.name), main,
                                 f" is seen {rng.choice(PLACES[main.subgroup])}"], main.id)
            # The setting is where the companions are: "a dog is running in front of a castle".
            lead = others[0]
            parts = [determiner(lead.name), lead] + _listed(others[1:], " with ")
            doing, near = rng.choice(_activities(lead, others)), rng.choice(NEAR)
            parts += [f" is {doing} {near} {determiner(main.name)}", main]
            return _compose(parts, main.id)
        doing = rng.choice(_activities(main, others))
        pattern = rng.choice(PATTERNS) if others else "alone"
        if pattern == "and" and any(o.subgroup != main.subgroup for o in others):
            pattern = "with"  # "are flying" said of a bird and a mushroom alike
        unfit = NOT_WHERE.get(doing, set()) | (SURFACES if any(o.subgroup in BULKY for o in others) else set())
        if pattern == "next to":  # "a pole is standing next to a shopping cart next to a sidewalk"
            unfit |= {w for w in PLACES[main.subgroup] if w.startswith("next to ")}
        where = rng.choice([w for w in PLACES[main.subgroup] if w not in unfit]
                           or [w for w in PLACES[main.subgroup] if w not in NOT_WHERE.get(doing, ())])
        parts = [determiner(main.name), main]
        if pattern == "and":  # "a teapot and a coffee mug are placed ...", "a teapot, a mug and a ladle are ..."
            for j, o in enumerate(others):
                parts += [" and " if j == len(others) - 1 else ", ", determiner(o.name), o]
            parts += [f" are {doing} {where}"]
        elif pattern == "next to":  # "a beagle is sitting next to a tennis ball in a park"
            parts += [f" is {doing}"] + _listed(others, " next to ") + [f" {where}"]
        else:  # "a beagle with a tennis ball is sitting in a park"
            parts += _listed(others, " with ") + [f" is {doing} {where}"]
        return _compose(parts, main.id)

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self):
        """One pass: each class once. Indexing goes on past it (prompt `len(self)` is the first class again, in
        another scene); iterating by index alone never ended, `__getitem__` raising no IndexError."""
        return (self[i] for i in range(len(self)))

    def take(self, n: int, start: int = 0) -> list[Prompt]:
        return [self[i] for i in range(start, start + n)]

    def _companion(self, main: LabelClass, rng: random.Random, taken: set[int]) -> LabelClass | None:
        """A class of a subgroup `main`'s is seen with, drawn by `COMPANIONS`' weights, none of `taken` (the
        prompt's classes so far) while the subgroup has others."""
        weights = {g: w for g, w in COMPANIONS[main.subgroup].items()
                   if any(c.id not in taken for c in self._by_subgroup.get(g, ()))}
        if not weights:  # a label space without the subgroups this one is seen with (a custom list)
            pool = [c for c in self.label_space.classes if c.id not in taken]
            return rng.choice(pool) if pool else None
        subgroup = rng.choices(list(weights), weights=list(weights.values()))[0]
        return rng.choice([c for c in self._by_subgroup[subgroup] if c.id not in taken])


def _activities(doer: LabelClass, others: list[LabelClass]) -> list[str]:
    """What `doer` can do with `others` along: its subgroup's activities but those (`CARRIED`) that some of them
    cannot go along with; all of them where none is left (a custom label space's odd companions)."""
    along = {o.subgroup for o in others}
    return [a for a in ACTIVITIES[doer.subgroup] if along <= CARRIED.get(a, along)] or ACTIVITIES[doer.subgroup]


def _listed(others: list[LabelClass], lead: str) -> list:
    """`lead` and the companions with their articles, joined by "and": " with a ball and a bone"."""
    parts: list = []
    for j, o in enumerate(others):
        parts += [lead if j == 0 else " and ", determiner(o.name), o]
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
