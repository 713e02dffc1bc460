"""Prompt dicts as a prompts file gives them."""

import pytest


def test_prompt_dicts_with_unknown_keys_or_empty_nouns_are_refused():
    from freeatm_hf.prompts import as_prompt

    with pytest.raises(ValueError, match=r"unknown prompt keys \['noun'\]"):
        as_prompt({"text": "a dog with a ball", "noun": ["dog", "ball"]})  # misspelt: would track nothing
    with pytest.raises(ValueError, match="empty noun"):
        as_prompt({"text": "a dog with a ball", "nouns": ["dog", " "]})
    assert as_prompt({"text": "a dog with a ball", "nouns": ["dog"], "label": 3}).nouns == ["dog"]
