"""A prompt is its text plus the character spans of the object nouns whose masks we want."""

import bisect
import re
from dataclasses import dataclass, field


def word_spans(word: str, text: str) -> list[tuple[int, int]]:
    """(start, end) of every whole-word, case-insensitive occurrence of `word` in `text`: "dog" in "a dog's
    bone" but not in "hotdog" or "dogs"."""
    return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", text, flags=re.IGNORECASE)]


def free_spans(word: str, text: str, taken) -> list[tuple[int, int]]:
    """`word_spans` of `word` that overlap none of the `taken` (start, end) spans."""
    return [(s, e) for s, e in word_spans(word, text) if not any(s < te and ts < e for ts, te in taken)]


class _Taken:
    """Disjoint (start, end) spans, kept sorted: whether a span overlaps one in O(log n)."""

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect.bisect_left(self.starts, end)  # the spans starting before `end`; the last of them ends latest
        return i > 0 and self.ends[i - 1] > start

    def add(self, start: int, end: int):
        i = bisect.bisect_left(self.starts, start)
        self.starts.insert(i, start)
        self.ends.insert(i, end)


@dataclass(frozen=True)
class PromptObject:
    """One tracked noun: `text[start:end] == name` (case-insensitive)."""

    name: str
    start: int
    end: int
    label: int = -1


@dataclass(frozen=True)
class Prompt:
    text: str
    objects: tuple[PromptObject, ...] = field(default_factory=tuple)
    label: int = -1

    def __post_init__(self):
        for o in self.objects:
            if self.text[o.start : o.end].lower() != o.name.lower():
                raise ValueError(f"object {o.name!r} does not match text[{o.start}:{o.end}] of {self.text!r}")

    @classmethod
    def from_nouns(cls, text: str, nouns: list[str], label: int = -1, labels: list[int] | None = None) -> "Prompt":
        """Locate each noun in `text` as a whole-word, case-insensitive match.

        A noun listed k times takes its first k occurrences, in order, so "a dog chasing a dog" with
        nouns ["dog", "dog"] tracks both dogs separately. Longer nouns are placed first and a noun never takes
        an occurrence inside another's span: in "a tennis ball and a ball" with ["tennis ball", "ball"], "ball"
        is the second ball, not the end of the first. A noun that is not in the text (or only inside another
        noun's span) is an error. `labels`, when given, are the nouns' classes, one per noun; `label` is the prompt's.
        """
        if any(not n.strip() for n in nouns):
            raise ValueError(f"empty noun in {nouns!r}: every tracked noun needs at least one character")
        if labels is not None and len(labels) != len(nouns):  # else an IndexError, or the extra labels dropped
            raise ValueError(f"{len(labels)} labels for {len(nouns)} nouns {nouns!r}: one label per noun")
        taken = _Taken()
        spans: dict[int, tuple[int, int]] = {}
        # Each noun's occurrences, found once, and how far along them its repeats have got: an occurrence passed
        # over was taken or lay inside a taken span, and stays so (spans are only ever added).
        occurrences: dict[str, list[tuple[int, int]]] = {}
        at: dict[str, int] = {}
        for j in sorted(range(len(nouns)), key=lambda j: -len(nouns[j])):  # stable: repeats keep their order
            noun = nouns[j]
            key = noun.lower()
            if key not in occurrences:
                occurrences[key] = word_spans(noun, text)
            found = occurrences[key]
            i = at.get(key, 0)
            while i < len(found) and taken.overlaps(*found[i]):
                i += 1
            if i == len(found):
                k = sum(n.lower() == key for n in nouns[:j])
                # More occurrences than its own repeats took: the rest lie inside other nouns.
                where = " outside the other nouns" if len(found) > k else ""
                raise ValueError(f"noun {noun!r} (occurrence {k + 1}) not found in prompt {text!r}{where}")
            spans[j] = found[i]
            taken.add(*found[i])
            at[key] = i + 1
        objects = tuple(PromptObject(noun, *spans[j], label=labels[j] if labels else -1) for j, noun in enumerate(nouns))
        return cls(text, objects, label)

    @property
    def nouns(self) -> list[str]:
        return [o.name for o in self.objects]


def as_prompt(p: "Prompt | str | dict") -> Prompt:
    """Accept a Prompt, a plain string (no tracked objects) or {"text": ..., "nouns": [...]}."""
    if isinstance(p, Prompt):
        return p
    if isinstance(p, str):
        return Prompt(p)
    if isinstance(p, dict):
        if not isinstance(p.get("text"), str):
            raise TypeError(f"a prompt needs a 'text' string, got keys {sorted(p)}")
        unknown = set(p) - {"text", "nouns", "label"}
        if unknown:  # a misspelt "nouns" would otherwise give a row with no masks at all
            raise ValueError(f"unknown prompt keys {sorted(unknown)}; a prompt has 'text', 'nouns' and optionally "
                             "'label'")
        nouns = p.get("nouns", [])
        if not isinstance(nouns, list) or not all(isinstance(n, str) for n in nouns):
            raise TypeError(f"'nouns' must be a list of strings, got {nouns!r}")
        return Prompt.from_nouns(p["text"], nouns, label=int(p.get("label", -1)))
    raise TypeError(f"cannot make a Prompt from {type(p).__name__}")
