import pytest

from freeatm_hf.attention import object_token_indices
from freeatm_hf.prompts import Prompt


def tokens_of(tokenizer, text, indices):
    ids = tokenizer(text).input_ids
    return [tokenizer.convert_ids_to_tokens(ids[i]) for i in indices]


def test_first_word_sits_after_the_start_token(tokenizer):
    (obj,) = object_token_indices(tokenizer, Prompt.from_nouns("dog on a lawn", ["dog"]))
    assert obj.token_indices == (1,) and not obj.truncated
    assert tokenizer(" dog on a lawn").input_ids[0] == tokenizer.bos_token_id


def test_multi_word_noun_takes_all_its_tokens(tokenizer):
    text = "a golden retriever with a tennis ball"
    dog, ball = object_token_indices(tokenizer, Prompt.from_nouns(text, ["golden retriever", "tennis ball"]))
    assert tokens_of(tokenizer, text, dog.token_indices) == ["golden</w>", "retriever</w>"]
    assert tokens_of(tokenizer, text, ball.token_indices) == ["tennis</w>", "ball</w>"]


def test_sub_word_noun_takes_every_piece_and_nothing_else(tokenizer):
    text = "a xylophonexyz near a zqwv"
    a, b = object_token_indices(tokenizer, Prompt.from_nouns(text, ["xylophonexyz", "zqwv"]))
    pieces = tokens_of(tokenizer, text, a.token_indices)
    assert len(pieces) > 1 and "".join(pieces).replace("</w>", "") == "xylophonexyz"
    assert "".join(tokens_of(tokenizer, text, b.token_indices)).replace("</w>", "") == "zqwv"
    assert max(a.token_indices) < min(b.token_indices)


def test_repeated_word_maps_each_occurrence_to_its_own_token(tokenizer):
    text = "a dog chasing a dog"  # "chasing" is two tokens here
    first, second = object_token_indices(tokenizer, Prompt.from_nouns(text, ["dog", "dog"]))
    assert first.token_indices == (2,) and second.token_indices == (6,)
    assert tokens_of(tokenizer, text, [2, 6]) == ["dog</w>", "dog</w>"]


def test_objects_past_the_77_token_limit_are_reported_truncated(tokenizer):
    filler = " ".join(["red"] * 80)
    text = f"a cat {filler} and a dog"
    cat, dog = object_token_indices(tokenizer, Prompt.from_nouns(text, ["cat", "dog"]))
    assert not cat.truncated and dog.truncated
    # A noun whose last token is the last content slot (75) is kept; one token later is cut.
    for n_filler, cut in [(73, False), (74, True)]:
        text = "a " + " ".join(["red"] * n_filler) + " cat"
        (obj,) = object_token_indices(tokenizer, Prompt.from_nouns(text, ["cat"]))
        assert obj.token_indices == (n_filler + 2,) and obj.truncated is cut
        kept = tokenizer(text, truncation=True, max_length=77).input_ids
        assert (tokenizer.convert_ids_to_tokens(kept[n_filler + 2]) == "cat</w>") is not cut


def test_slow_tokenizer_is_refused():
    class Slow:
        is_fast = False

    with pytest.raises(TypeError, match="fast tokenizer"):
        object_token_indices(Slow(), Prompt("a"))


def test_an_unknown_token_inside_a_noun_is_one_of_its_columns():
    from freeatm_hf.generate.clip_vocab import load_t5_tokenizer

    t5 = load_t5_tokenizer()  # lower-case vocabulary: the capital "A" is T5's unknown token
    text = "an Afghan hound on a lawn"
    (obj,) = object_token_indices(t5, Prompt.from_nouns(text, ["Afghan hound"]))
    pieces = tokens_of(t5, text, obj.token_indices)
    assert t5.unk_token in pieces and pieces[-1] == "▁hound"
    assert obj.token_indices == tuple(range(1, 9))
