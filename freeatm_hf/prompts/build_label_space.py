"""Rebuild `imagenet_label_space.json` from the ImageNet-1k synset files that timm ships.

    python -m freeatm_hf.prompts.build_label_space [--output FILE]

The coarse hierarchy follows the WordNet order of the 1k classes (contiguous index ranges for the
animal families, food, geological formations, people, plants); vehicles are scattered among the artifacts,
so they are listed by index.
"""

import json
import os
from pathlib import Path

OUT = Path(__file__).with_name("imagenet_label_space.json")

# (first, last, group, subgroup): inclusive ranges in the standard class order.
RANGES = [
    (0, 6, "animal", "fish"),
    (7, 24, "animal", "bird"),
    (25, 68, "animal", "reptile"),
    (69, 79, "animal", "insect"),
    (80, 100, "animal", "bird"),
    (101, 106, "animal", "mammal"),
    (107, 126, "animal", "sea creature"),
    (127, 146, "animal", "bird"),
    (147, 150, "animal", "sea creature"),
    (151, 268, "animal", "dog"),
    (269, 299, "animal", "mammal"),
    (300, 326, "animal", "insect"),
    (327, 329, "animal", "sea creature"),
    (330, 388, "animal", "mammal"),
    (389, 397, "animal", "fish"),
    (398, 923, "object", "object"),
    (924, 969, "food", "food"),
    (970, 980, "scene", "scene"),
    (981, 983, "person", "person"),
    (984, 998, "plant", "plant"),
    (999, 999, "object", "object"),
]
VEHICLES = {
    403, 404, 405, 407, 408, 436, 444, 450, 466, 468, 472, 484, 510, 511, 537, 547, 554, 555, 565, 569, 573, 575,
    576, 586, 595, 603, 609, 612, 625, 627, 628, 654, 656, 661, 665, 670, 671, 675, 690, 705, 717, 724, 734, 751,
    757, 779, 780, 802, 803, 814, 817, 820, 829, 833, 847, 864, 866, 867, 870, 871, 874, 880, 895, 914,
    561, 812,  # forklift, space shuttle
}
# Boats and ships move on water; templates use this to pick plausible verbs and places.
WATERCRAFT = {403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914}
AIRCRAFT = {404, 405, 812, 895}
# The first WordNet lemma names something else in a prompt ("a pirate is sailing" draws a person, and the mask
# follows the person): the name a caption would use instead; the lemmas stay as synonyms.
NAMES = {408: "amphibious vehicle", 468: "taxi", 628: "ocean liner", 724: "pirate ship", 751: "race car",
         989: "rose hip", 998: "ear of corn"}


def _read(info_dir: str, name: str) -> dict[str, str]:
    with open(os.path.join(info_dir, name)) as f:
        return dict(line.rstrip("\n").split("\t", 1) for line in f if line.strip())


def build() -> list[dict]:
    import timm

    info = os.path.join(os.path.dirname(timm.__file__), "data", "_info")
    with open(os.path.join(info, "imagenet_synsets.txt")) as f:
        synsets = f.read().split()
    lemmas = _read(info, "imagenet_synset_to_lemma.txt")
    classes = []
    for first, last, group, sub in RANGES:
        for i in range(first, last + 1):
            names = [n.strip() for n in lemmas[synsets[i]].split(",") if n.strip()]
            g, s = group, sub
            if i in VEHICLES:
                g, s = "vehicle", "watercraft" if i in WATERCRAFT else "aircraft" if i in AIRCRAFT else "land"
            name = NAMES.get(i, names[0])
            classes.append({"id": i, "synset": synsets[i], "name": name, "synonyms": [n for n in names if n != name],
                            "group": g, "subgroup": s})
    assert [c["id"] for c in classes] == list(range(1000))
    return classes


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m freeatm_hf.prompts.build_label_space",
                                description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=OUT, help="default: the package's own file (in a checkout)")
    args = p.parse_args(argv)
    args.output.write_text("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in build()) + "\n]\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
