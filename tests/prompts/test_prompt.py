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
