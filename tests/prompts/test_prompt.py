"""Prompt dicts as a prompts file gives them."""

import pytest


def test_prompt_dicts_with_unknown_keys_or_empty_nouns_are_refused():
    from freeatm_hf.prompts import as_prompt

    with pytest.raises(ValueError, match=r"unknown prompt keys \['noun'\]"):
        as_prompt({"text": "a dog with a ball", "noun": ["dog", "ball"]})  # misspelt: would track nothing
    with pytest.raises(ValueError, match="empty noun"):
        as_prompt({"text": "a dog with a ball", "nouns": ["dog", " "]})
    assert as_prompt({"text": "a dog with a ball", "nouns": ["dog"], "label": 3}).nouns == ["dog"]


def test_word_spans_are_whole_words_case_insensitive():
    from freeatm_hf.prompts import word_spans

    text = "A Dog, a hotdog, dogs and a dog's bone; a sea-dog"
    assert word_spans("dog", text) == [(2, 5), (28, 31), (46, 49)]  # not inside "hotdog" or "dogs"; "-" parts words
    assert [text[s:e] for s, e in word_spans("dog", text)] == ["Dog", "dog", "dog"]
    assert word_spans("a.b", "axb a.b") == [(4, 7)]  # the noun is literal text, not a pattern


def test_from_nouns_gives_repeats_their_own_occurrence_and_longer_nouns_first():
    from freeatm_hf.prompts import Prompt

    p = Prompt.from_nouns("a tennis ball and a ball near a dog chasing a dog", ["ball", "tennis ball", "dog", "dog"])
    assert [(o.name, p.text[o.start:o.end], o.start) for o in p.objects] == [
        ("ball", "ball", 20), ("tennis ball", "tennis ball", 2), ("dog", "dog", 32), ("dog", "dog", 46)]
    with pytest.raises(ValueError, match="occurrence 1.*outside the other nouns"):
        Prompt.from_nouns("a tennis ball", ["tennis ball", "ball"])


def _from_nouns_reference(text, nouns):
    """The rule written out plainly: longest nouns first, each taking its first occurrence outside the spans
    already taken (every occurrence rechecked against every span: cubic in the noun count)."""
    from freeatm_hf.prompts import free_spans

    taken, spans = [], {}
    for j in sorted(range(len(nouns)), key=lambda j: -len(nouns[j])):
        free = free_spans(nouns[j], text, taken)
        if not free:
            return None
        spans[j] = free[0]
        taken.append(free[0])
    return [spans[j] for j in range(len(nouns))]


def test_from_nouns_places_nouns_as_the_plain_rule_does():
    """`from_nouns` reads each noun's occurrences once and bisects the taken spans (800 copies of one noun took
    5.8 s, now milliseconds); where it places every noun must not change."""
    import random

    from freeatm_hf.prompts import Prompt

    rng = random.Random(0)
    words = ["ball", "tennis ball", "tennis", "dog", "hot dog", "Dog", "cat"]
    for _ in range(500):
        text = " and ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        nouns = [rng.choice(words) for _ in range(rng.randint(1, 6))]
        expected = _from_nouns_reference(text, nouns)
        if expected is None:
            with pytest.raises(ValueError, match="not found in prompt"):
                Prompt.from_nouns(text, nouns)
        else:
            assert [(o.start, o.end) for o in Prompt.from_nouns(text, nouns).objects] == expected, (text, nouns)


def test_nouns_side_by_side_do_not_overlap():
    """Spans are half-open: a noun that ends in a non-word character can touch the next one ("y+" and "+x" in
    "y++x"), and neither takes the other's place, in whichever order they are placed."""
    from freeatm_hf.prompts import Prompt, free_spans

    text = "y++x"
    left, right = (text.find("y+"), text.find("y+") + 2), (text.rfind("+x"), text.rfind("+x") + 2)
    assert left[1] == right[0]  # they touch
    assert free_spans("+x", text, [left]) == [right]
    assert free_spans("y+", text, [right]) == [left]
    for nouns in (["y+", "+x"], ["+x", "y+"]):
        spans = {o.name: (o.start, o.end) for o in Prompt.from_nouns(text, nouns).objects}
        assert spans == {"y+": left, "+x": right}


def test_a_prompt_dicts_label_is_the_rows_label():
    """A prompts file line's "label" is the row's class (the dataset's `label` column), as an int."""
    from freeatm_hf.prompts import as_prompt

    assert as_prompt({"text": "a dog with a ball", "nouns": ["dog"], "label": 3}).label == 3
    assert as_prompt({"text": "a dog with a ball", "nouns": ["dog"], "label": "7"}).label == 7
    assert as_prompt({"text": "a dog with a ball", "nouns": ["dog"]}).label == -1


def test_an_object_whose_span_is_not_its_name_is_refused():
    """`text[start:end]` must be the object's name (case aside): a span off by one would mask the wrong tokens."""
    from freeatm_hf.prompts import Prompt
    from freeatm_hf.prompts.prompt import PromptObject

    text = "A Dog with a ball"
    start = text.lower().index("dog")
    assert Prompt(text, (PromptObject("dog", start, start + 3),)).objects[0].start == start
    for s, e in ((start + 1, start + 4), (start - 1, start + 2), (start, start + 4)):
        with pytest.raises(ValueError, match="does not match"):
            Prompt(text, (PromptObject("dog", s, e),))


def test_one_label_per_noun_or_a_clear_error():
    """Too few labels were an IndexError; too many were dropped without a word."""
    from freeatm_hf.prompts import Prompt

    p = Prompt.from_nouns("a dog and a cat", ["dog", "cat"], label=7, labels=[1, 2])
    assert [o.label for o in p.objects] == [1, 2] and p.label == 7
    for labels in ([1], [1, 2, 3]):
        with pytest.raises(ValueError, match=f"{len(labels)} labels for 2 nouns"):
            Prompt.from_nouns("a dog and a cat", ["dog", "cat"], labels=labels)
