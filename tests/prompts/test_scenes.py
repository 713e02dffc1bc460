import pytest

from freeatm_hf.prompts import LabelSpace, Prompt, ScenePrompts


def test_imagenet_label_space_has_1000_classes_with_unique_names_and_all_groups():
    space = LabelSpace.imagenet()
    assert len(space) == 1000
    assert len(set(space.names)) == 1000
    assert {c.group for c in space.classes} == {"animal", "person", "vehicle", "object", "food", "plant", "scene"}
    assert space[207].name == "golden retriever" and space[207].subgroup == "dog"
    assert space[817].name == "sports car" and space[817].group == "vehicle"
    assert space[963].name == "pizza" and space[963].group == "food"


def test_prompt_i_depends_only_on_seed_and_index():
    a, b = ScenePrompts(seed=3), ScenePrompts(seed=3)
    assert a.take(5, start=100) == [b[i] for i in range(100, 105)]
    assert a.take(20) != ScenePrompts(seed=4).take(20)


def test_one_pass_covers_every_class_once():
    prompts = ScenePrompts(seed=0).take(1000)
    assert sorted(p.label for p in prompts) == list(range(1000))


@pytest.mark.parametrize("num_objects", [1, 2, 3])
def test_scene_prompts_track_every_class_noun_at_its_span(num_objects):
    for p in ScenePrompts(seed=1, num_objects=num_objects).take(200):
        assert 1 <= len(p.objects) <= num_objects
        assert p.objects[0].label == p.label or LabelSpace.imagenet()[p.label].group == "scene"
        for o in p.objects:
            assert p.text[o.start : o.end] == o.name
            assert LabelSpace.imagenet()[o.label].name == o.name


def test_templates_depend_on_the_hierarchy():
    space = LabelSpace.imagenet()
    texts = {space[p.label].subgroup: p.text for p in ScenePrompts(seed=0).take(1000)}
    assert any(w in texts["fish"] for w in ("swimming",))
    assert any(w in texts["aircraft"] for w in ("flying",))
    assert " with " in texts["dog"] and " is " in texts["dog"]


def test_photo_mode_is_the_papers_base_prompt():
    p = ScenePrompts(mode="photo", seed=0)[0]
    name = LabelSpace.imagenet()[p.label].name
    assert p.text in (f"a photo of a {name}", f"a photo of an {name}")
    assert p.nouns == [name]


def test_from_nouns_handles_repeats_multiword_and_case():
    p = Prompt.from_nouns("A Golden Retriever chasing a dog and another dog", ["golden retriever", "dog", "dog"])
    assert [(o.start, o.end) for o in p.objects] == [(2, 18), (29, 32), (45, 48)]
    with pytest.raises(ValueError, match="occurrence 2"):
        Prompt.from_nouns("a cat", ["cat", "cat"])
    with pytest.raises(ValueError, match="not found"):
        Prompt.from_nouns("a category", ["cat"])  # whole words only


def test_a_noun_inside_a_longer_noun_takes_its_own_occurrence():
    # "ball" is also the end of "tennis ball": it must be the second ball, in whichever order the nouns come.
    for nouns in (["tennis ball", "ball"], ["ball", "tennis ball"]):
        p = Prompt.from_nouns("a tennis ball and a ball", nouns)
        assert [o.name for o in p.objects] == nouns  # the given order
        assert {o.name: (o.start, o.end) for o in p.objects} == {"tennis ball": (2, 13), "ball": (20, 24)}
    with pytest.raises(ValueError, match=r"noun 'ball' \(occurrence 1\) not found in prompt 'a tennis ball' outside"):
        Prompt.from_nouns("a tennis ball", ["tennis ball", "ball"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="mode"):
        ScenePrompts(mode="poem")
    with pytest.raises(ValueError, match="num_objects"):
        ScenePrompts(num_objects=5)


def test_articles_go_by_sound_and_scene_prompts_have_single_spaces():
    from freeatm_hf.prompts.scenes import article

    assert [article(n) for n in ["unicycle", "European gallinule", "hourglass", "umbrella", "hay", "ostrich"]] == [
        "a", "a", "an", "an", "a", "an"]
    prompts = ScenePrompts(num_objects=1, seed=0)
    texts = [prompts[i].text for i in range(2000)]
    assert not [t for t in texts if "  " in t]
    assert any(" is seen " in t for t in texts)  # scene classes alone: "a lakeside is seen at sunset"


@pytest.mark.parametrize("group", ["animal", "vehicle", "object", "person", "food", "plant", "scene"])
def test_a_flat_label_space_of_any_group_makes_scene_prompts(group):
    prompts = ScenePrompts(LabelSpace.from_names(["dog", "cat", "bus"], group=group), seed=0)
    for i in range(20):
        p = prompts[i]
        assert all(p.text[o.start:o.end] == o.name for o in p.objects)


def test_class_names_say_what_a_caption_would_and_vehicles_are_vehicles():
    classes = LabelSpace.imagenet().classes
    # WordNet's first lemma names something else in a prompt ("a pirate is sailing" draws a person).
    assert (classes[724].name, classes[408].name, classes[989].name) == ("pirate ship", "amphibious vehicle", "rose hip")
    assert "pirate" in classes[724].synonyms  # the lemma is kept
    assert (classes[561].group, classes[561].subgroup) == ("vehicle", "land")  # forklift
    assert (classes[812].group, classes[812].subgroup) == ("vehicle", "aircraft")  # space shuttle
    assert len(set(LabelSpace.imagenet().names)) == 1000


def test_a_subgroup_the_templates_do_not_know_is_refused_up_front():
    from freeatm_hf.prompts.label_space import LabelClass

    space = LabelSpace([LabelClass(0, "tabby cat", "animal", "cat"), LabelClass(1, "ball", "object", "object")])
    with pytest.raises(ValueError, match=r"no subgroup \['cat'\]"):
        ScenePrompts(space)
    assert ScenePrompts(space, mode="photo")[0].text == "a photo of a tabby cat"
