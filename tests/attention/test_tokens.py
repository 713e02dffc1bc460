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


def test_punctuation_touching_a_noun_is_not_its_token(tokenizer):
    """Tokens that end where the noun starts, or start where it ends, lie outside it: '(' and ')' / ',' here
    (some of them unknown to the vocabulary, and so unknown tokens, which may be a noun's own)."""
    from freeatm_hf.generate.clip_vocab import load_t5_tokenizer

    text = "a red (dog), on grass"
    for tok in (tokenizer, load_t5_tokenizer()):
        (dog,) = object_token_indices(tok, Prompt.from_nouns(text, ["dog"]))
        enc = tok(text, return_offsets_mapping=True)
        assert [enc.offset_mapping[i] for i in dog.token_indices][0][0] == text.index("dog")
        assert "".join(tokens_of(tok, text, dog.token_indices)).replace("</w>", "").replace("▁", "") == "dog"


def test_a_noun_with_one_token_past_the_limit_is_truncated(tokenizer):
    """'golden' in the last content slot (75), 'retriever' in the end token's: any token cut is a truncated noun."""
    text = "a " + " ".join(["red"] * 73) + " golden retriever"
    (obj,) = object_token_indices(tokenizer, Prompt.from_nouns(text, ["golden retriever"]))
    assert obj.token_indices == (75, 76) and obj.truncated


def test_without_an_end_token_the_last_slot_holds_content():
    """A tokenizer that appends no end token keeps `max_length` content tokens when it truncates."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "red": 2, "cat": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]", model_max_length=8)
    for n_red, cut in [(6, False), (7, True)]:
        text = "a " + " ".join(["red"] * n_red) + " cat"
        (cat,) = object_token_indices(tok, Prompt.from_nouns(text, ["cat"]))
        assert cat.token_indices == (n_red + 1,) and cat.truncated is cut
        kept = tok(text, truncation=True, max_length=8).input_ids
        assert (len(kept) > n_red + 1 and kept[n_red + 1] == 3) is not cut


def test_a_span_without_any_token_is_refused_by_name(tokenizer):
    from freeatm_hf.prompts.prompt import PromptObject

    gap = Prompt("a dog  on grass", (PromptObject("  ", 5, 7),))  # two spaces: no token covers them
    with pytest.raises(ValueError, match="maps to no token"):
        object_token_indices(tokenizer, gap)
