"""Word → token positions, so each object noun knows which key columns of the attention are its own.

Positions index the encoded sequence the text encoder sees (position 0 is the start token). A noun
may span several sub-word tokens ("xylophone" → "xy", "lo", "phone") and several words ("golden
retriever"); repeated words are told apart by their character spans in the prompt. Tokens cut off by
the encoder's length limit cannot be attended to: an object with any token cut is reported
`truncated` and gets no map, rather than a map of the wrong tokens.
"""

from dataclasses import dataclass

from ..prompts import Prompt


@dataclass(frozen=True)
class ObjectTokens:
    name: str
    token_indices: tuple[int, ...]
    truncated: bool = False


def object_token_indices(tokenizer, prompt: Prompt, max_length: int | None = None) -> list[ObjectTokens]:
    """Token positions of each tracked object of `prompt` under `tokenizer` (a fast tokenizer).

    `max_length` defaults to `tokenizer.model_max_length`; the last position is kept for the end token,
    as the text encoders of CLIP and T5 do when they truncate.
    """
    if not getattr(tokenizer, "is_fast", True):
        raise TypeError("object_token_indices needs a fast tokenizer (offset mappings)")
    max_length = max_length or tokenizer.model_max_length
    enc = tokenizer(prompt.text, return_offsets_mapping=True, truncation=False, add_special_tokens=True)
    special = set(tokenizer.all_special_ids)
    # An unknown token inside a noun ("A" of "Afghan" to T5's vocabulary) is still a column the encoder sees at
    # that place: it is the noun's. Start, end and padding tokens never are (their offsets are empty anyway).
    not_content = special - {tokenizer.unk_token_id}
    # The last kept slot holds the end token after truncation; content must sit before it.
    last_content = max_length - 2 if enc["input_ids"][-1] in special else max_length - 1
    result = []
    for obj in prompt.objects:
        idx = tuple(
            i
            for i, ((s, e), tid) in enumerate(zip(enc["offset_mapping"], enc["input_ids"]))
            if e > s and s < obj.end and e > obj.start and tid not in not_content
        )
        if not idx:
            raise ValueError(f"object {obj.name!r} maps to no token of {prompt.text!r}")
        result.append(ObjectTokens(obj.name, idx, truncated=max(idx) > last_content))
    return result
