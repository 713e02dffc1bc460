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
    (981, 982, "person", "person"),
    (983, 983, "person", "diver"),  # the scuba diver is found in the water, and with what lives there
    (984, 998, "plant", "plant"),
    (999, 999, "object", "object"),
]
# Animals found elsewhere than the rest of their range: fish of ponds and rivers, not of reefs; whales and their
# kin in the open sea, not tide pools; the land snail and slug where insects crawl; the jellyfish and the nautilus
# swimming with the fish, where the other sea creatures crawl and rest; the anemone and the brain coral growing;
# ducks, swans, storks, herons, waders and the penguin by the water, fowl, grouse, the peacock, the ostrich and the
# bustard on the ground, where the other birds perch on branches and fly.
ANIMAL_SUBGROUPS = {"river fish": {0, 1, 391, 394, 395}, "marine mammal": {147, 148, 149, 150}, "insect": {113, 114},
                    "fish": {107, 117}, "coral": {108, 109},
                    "water bird": {97, 98, 99, 100} | set(range(127, 147)) - {138},
                    "ground bird": {7, 8, 9, 80, 81, 82, 83, 84, 85, 86, 138}}
# In the food range, but fodder: found in a garden or a yard, not served.
HAY = 958
VEHICLES = {
    403, 404, 405, 407, 408, 436, 444, 450, 466, 468, 472, 484, 510, 511, 537, 547, 554, 555, 565, 569, 573, 575,
    576, 586, 595, 603, 609, 612, 625, 627, 628, 654, 656, 661, 665, 670, 671, 675, 690, 705, 717, 724, 734, 751,
    757, 779, 780, 802, 803, 814, 817, 820, 829, 833, 847, 864, 866, 867, 870, 871, 874, 880, 895, 914,
    561, 812,  # forklift, space shuttle
}
# Boats and ships move on water; templates use this to pick plausible verbs and places.
WATERCRAFT = {403, 472, 484, 510, 554, 576, 625, 628, 724, 780, 814, 833, 871, 914}
AIRCRAFT = {404, 405, 812, 895}
# Trains run on rails, not down roads into parking lots; bicycles are ridden, not driven.
RAIL = {466, 547, 565, 705, 820}
CYCLES = {444, 671, 870, 880}
# The 461 other artifacts, by where they are found and what they are found with (the scene templates draw places
# and companions by subgroup); the rest (a barrel, a lighter, a whistle: found anywhere) stay "object". Buildings
# and fixed structures are settings, as the geological scenes are: "a dog is running in front of a castle", never
# "a dog with a castle".
OBJECT_SUBGROUPS = {
    "structure": {406, 410, 415, 424, 425, 437, 442, 449, 454, 460, 467, 476, 483, 497, 498, 500, 509, 517, 525, 536,
                  538, 540, 562, 580, 582, 624, 634, 646, 649, 660, 663, 668, 682, 698, 706, 708, 718, 727, 743, 755,
                  762, 788, 807, 819, 821, 832, 839, 853, 854, 858, 860, 863, 865, 873, 884, 888, 900, 913, 915},
    "street": {412, 480, 489, 557, 571, 637, 640, 645, 703, 704, 707, 716, 733, 781, 791, 825, 877, 886, 912, 919, 920},
    "clothing": {399, 400, 411, 443, 445, 451, 457, 459, 465, 474, 490, 496, 501, 529, 552, 568, 578, 591, 601, 608,
                 610, 614, 617, 638, 639, 652, 655, 658, 689, 697, 735, 775, 796, 806, 824, 834, 841, 842, 869, 885,
                 887, 906, 911},
    # worn but neither hung nor folded: shoes, hats, helmets, armour, bags, jewellery, eyewear, a wig, an umbrella
    "accessory": {414, 433, 439, 452, 461, 502, 514, 515, 518, 524, 560, 584, 615, 630, 636, 643, 667, 679, 715, 748,
                  770, 774, 793, 808, 836, 837, 879, 893, 903},
    "kitchen": {440, 441, 455, 463, 469, 473, 478, 499, 503, 504, 505, 512, 521, 533, 544, 550, 567, 572, 618, 647,
                651, 653, 659, 666, 680, 692, 700, 725, 729, 737, 766, 773, 809, 813, 828, 849, 859, 868, 891, 898,
                899, 901, 907, 909, 910, 922, 923},
    # too big for a counter or a table: they stand in the kitchen
    "appliance": {534, 760, 827},
    "furniture": {409, 421, 423, 431, 435, 453, 470, 492, 493, 495, 516, 520, 526, 530, 532, 539, 545, 548, 553, 556,
                  559, 564, 588, 619, 669, 721, 741, 750, 753, 765, 771, 786, 789, 794, 799, 811, 831, 846, 857, 861,
                  876, 882, 883, 892, 894, 896, 897, 904, 905},
    "instrument": {401, 402, 420, 432, 486, 494, 513, 541, 542, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684,
                   687, 699, 714, 776, 822, 875, 881, 889},
    "electronics": {481, 482, 485, 487, 508, 527, 528, 531, 589, 590, 592, 598, 605, 613, 620, 622, 632, 650, 662, 664,
                    673, 681, 688, 713, 732, 742, 745, 754, 759, 761, 782, 810, 818, 844, 848, 851, 878},
    "tool": {462, 464, 475, 477, 479, 488, 491, 506, 507, 535, 581, 587, 596, 600, 616, 621, 677, 685, 686, 695, 696,
             726, 730, 731, 739, 740, 769, 772, 783, 784, 785, 792, 816, 840, 855, 856, 872},
    "sports": {416, 417, 422, 429, 430, 522, 543, 574, 602, 611, 672, 693, 701, 702, 719, 722, 723, 736, 746, 747, 752,
               758, 768, 795, 797, 801, 805, 843, 850, 852, 890},
    "office": {398, 418, 426, 446, 447, 549, 563, 604, 623, 633, 635, 709, 710, 749, 767, 798, 826, 917, 918, 921},
    "bathroom": {434, 551, 585, 629, 631, 648, 711, 804, 838, 999},
    "medical": {419, 438, 523, 678, 691, 712, 720, 823, 830, 845},
    "weapon": {413, 456, 471, 570, 583, 597, 657, 744, 763, 764, 777, 787},
    "garden": {428, 448, 599, 607, 738, 756, 815, 835},
}
# The first WordNet lemma names something else in a prompt ("a pirate is sailing" draws a person, and the mask
# follows the person), or another class too (two "crane"s, two "maillot"s, the corgi "Cardigan" and the sweater
# "cardigan", one text to a tokenizer that lowers case): the name a caption would use instead; the lemmas stay as
# synonyms.
NAMES = {408: "amphibious vehicle", 468: "taxi", 628: "ocean liner", 724: "pirate ship", 751: "race car",
         989: "rose hip", 998: "ear of corn",
         264: "Cardigan Welsh corgi", 517: "construction crane", 638: "leotard", 639: "one-piece swimsuit",
         # an airplane, a paper notebook, a rodent, a king, a naval officer, a curl of hair, a cat, a pickaxe
         726: "carpenter's plane", 681: "notebook computer", 673: "computer mouse", 323: "monarch butterfly",
         321: "admiral butterfly", 322: "ringlet butterfly", 383: "ring-tailed lemur", 714: "guitar pick",
         # a heap of stones, a bull, a fighter, a herb, a city, an island, a town, food, a pattern
         192: "cairn terrier", 195: "Boston terrier", 242: "boxer dog", 339: "sorrel horse", 204: "Lhasa apso",
         256: "Newfoundland dog", 263: "Pembroke Welsh corgi", 260: "chow chow", 281: "tabby cat",
         # a document file, a regulation, an adjective, an opening, a name, a ring of metal
         553: "filing cabinet", 769: "ruler", 881: "upright piano", 800: "slot machine", 850: "teddy bear",
         897: "washing machine",
         # WordNet's singular of clothes said in the plural ("a jean" is no English; scenes say "a pair of jeans")
         608: "jeans", 697: "pajamas",
         # explicit content (the generator runs with no safety checker), a cotton swab, a brass instrument, a bird's
         # wing, a cat or a goat, a shrike
         7: "rooster", 680: "baby bottle", 840: "mop", 458: "plaque", 908: "airplane wing", 332: "Angora rabbit",
         33: "loggerhead turtle",
         # a trademark's capital, stuff where a setting is a thing ("in front of thatch")
         630: "loafer", 853: "thatched roof",
         # a car (American English's "passenger car"), for the railway coach
         705: "railway carriage",
         # stuff, where the class's images are of bales and stacks of it
         958: "hay bale"}


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
                g, s = "vehicle", next((sub for sub, ids in (("watercraft", WATERCRAFT), ("aircraft", AIRCRAFT),
                                                             ("rail", RAIL), ("cycle", CYCLES)) if i in ids), "land")
            elif g == "object":
                s = next((k for k, ids in OBJECT_SUBGROUPS.items() if i in ids), "object")
            elif g == "animal":
                s = next((k for k, ids in ANIMAL_SUBGROUPS.items() if i in ids), s)
            elif i == HAY:
                s = "garden"
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
