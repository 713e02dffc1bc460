"""Optional LLM rewriting of template prompts into more natural scene descriptions.

An augmenter maps a `Prompt` to a `Prompt`. The rewrite must keep every tracked noun verbatim (we need
their positions for the attention masks); a rewrite that drops or alters one is rejected and the
template prompt is kept, with a warning, so a bad LLM answer can never corrupt the objects of a row.
"""

import logging
import os
import re
import time
from functools import cache

from .prompt import Prompt, word_spans

logger = logging.getLogger(__name__)

# The instruction asks for 30; the slack lets a near miss through, while 40 words stay well inside CLIP's 77 tokens.
MAX_WORDS = 40
INSTRUCTION = (
    "Rewrite this image description as one natural, concrete sentence of at most 30 words. Keep each of "
    "these phrases exactly as written: {nouns}. Answer with the sentence only.\nDescription: {text}"
)


class PromptAugmenter:
    """Base class: subclasses implement `complete(instruction) -> str`, and may answer many instructions at
    once (`complete_many`; a server's, concurrently)."""

    def complete(self, instruction: str) -> str:
        raise NotImplementedError

    def complete_many(self, instructions: list[str]) -> list[str]:
        return [self.complete(i) for i in instructions]

    def __call__(self, prompt: Prompt) -> Prompt:
        return self.many([prompt])[0]

    def many(self, prompts: list[Prompt]) -> list[Prompt]:
        """Each prompt rewritten (or kept, see `accept`), in order; their instructions go out together."""
        asked = [p for p in prompts if p.objects]
        answers = iter(self.complete_many([instruction(p) for p in asked]))
        return [self.accept(p, next(answers)) if p.objects else p for p in prompts]

    def accept(self, prompt: Prompt, answer) -> Prompt:
        """The rewrite the answer gives, or the template prompt when it does not keep the objects."""
        nouns = prompt.nouns
        # A server may answer null content (a reasoning model out of tokens): refused like an empty answer.
        answer = answer if isinstance(answer, str) else ""
        text = unwrap(answer.strip().splitlines()[0]) if answer.strip() else ""
        words = len(re.findall(r"[\w'-]+", text))
        try:
            rewritten = Prompt.from_nouns(text, nouns, label=prompt.label, labels=[o.label for o in prompt.objects])
            problem = rewrite_problem(prompt, rewritten)
        except ValueError:
            problem = "a tracked noun is missing"
        limit = max(MAX_WORDS, len(re.findall(r"[\w'-]+", prompt.text)))
        if not problem and words > limit:
            # Past the text encoder's length (CLIP: 77 tokens) a noun gets no map, and the caption would say more
            # than the image was generated from.
            problem = f"{words} words, more than the {limit} allowed"
        if problem:
            logger.warning("augmenter answer refused (%s); keeping the template prompt %r", problem, prompt.text)
            return prompt
        return rewritten


# How a chat model dresses its one sentence: a list item's number or bullet, then quotes or markdown around it
# (a period may follow the closing quote).
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•>])\s+")
_WRAPPERS = (('"', '"'), ("'", "'"), ("“", "”"), ("‘", "’"), ("«", "»"), ("**", "**"), ("*", "*"), ("_", "_"),
             ("`", "`"))


def unwrap(line: str) -> str:
    """The sentence of an answer's line without its list marker and the quotes or emphasis around it all; a
    quote inside ('a dog's "ball"') stays, so a quoted noun is still seen and refused."""
    text = _LIST_MARKER.sub("", line).strip()
    while (inner := _unwrapped_once(text)) is not None:
        text = inner
    return text


def _unwrapped_once(text: str) -> str | None:
    for first, last in _WRAPPERS:
        for end in (last, last + "."):
            inner = text[len(first) : -len(end)]
            # A wrapper's mark inside the sentence, other than within a word (an apostrophe: "dog's"), means the
            # marks at the ends are not a pair around the whole: '"ball" and "bat"' is no quoted sentence.
            loose = rf"(?<!\w)(?:{re.escape(first)}|{re.escape(last)})|(?:{re.escape(first)}|{re.escape(last)})(?!\w)"
            if (len(text) > len(first) + len(end) and text.startswith(first) and text.endswith(end)
                    and not re.search(loose, inner)):
                return inner.strip() + ("." if end != last and not inner.endswith(".") else "")
    return None


def instruction(prompt: Prompt) -> str:
    return INSTRUCTION.format(nouns=", ".join(f'"{n}"' for n in prompt.nouns), text=prompt.text)


# What an answer that is not a plain rewrite gives away: the instruction echoed, a preamble ("Sure! Here is the
# sentence: ..."), nouns quoted as in the instruction's list.
_NOT_A_SENTENCE = re.compile(r"description:|keep each of|rewrite this|answer with|:", re.IGNORECASE)


@cache
def _label_names() -> frozenset[str]:
    from .label_space import LabelSpace

    return frozenset(n.lower() for n in LabelSpace.imagenet().vocabulary)


def rewrite_problem(template: Prompt, rewritten: Prompt) -> str | None:
    """Why a rewrite that contains every tracked noun still does not track the same objects, or None.

    Refused: an answer that is not a plain sentence (see `_NOT_A_SENTENCE`, or a quoted noun); a noun whose
    whole-word count changed ("a dog with a hot dog" → "a hot dog and another hot dog" keeps "dog" only inside
    "hot dog"); a noun that became part of a longer class name or a hyphenated compound the template did not hold
    ("lion" → "sea lion", "dog" → "hot-dog").
    """
    text, old = rewritten.text, template.text.lower()
    if _NOT_A_SENTENCE.search(text):
        return "not a plain sentence"
    for noun in set(template.nouns):
        if re.search(rf"[\"'“‘]{re.escape(noun)}[\"'”’]", text, flags=re.IGNORECASE):
            return f"{noun!r} quoted"
        now, before = len(word_spans(noun, text)), len(word_spans(noun, template.text))
        if now != before:
            return f"{noun!r} appears {now} times, not {before}"
    words = re.findall(r"[\w'-]+", text.lower())
    names = _label_names()
    for o in rewritten.objects:
        # A hyphen joins the noun into another word ("hot-dog", "sea-lion"): a compound the template did not hold.
        compound = (re.search(r"[\w'-]*$", text[: o.start]).group() + text[o.start : o.end]
                    + re.match(r"[\w'-]*", text[o.end :]).group()).lower()
        if compound != o.name.lower() and "-" in compound and compound not in old:
            return f"{o.name!r} became part of {compound!r}"
        n = len(o.name.split())
        start = len(re.findall(r"[\w'-]+", text[: o.start].lower()))
        # The noun with up to two words either side: a class name it now belongs to.
        for before in range(min(start, 2) + 1):
            for after in range(3):
                phrase = " ".join(words[start - before : start + n + after])
                if before + after and phrase in names and phrase not in old:
                    return f"{o.name!r} became part of {phrase!r}"
    return None


class NoChatTemplateError(ValueError):
    pass


class TransformersAugmenter(PromptAugmenter):
    """A local `transformers` text-generation pipeline (model id or folder), greedy decoding."""

    def __init__(self, model: str, max_new_tokens: int = 60, **pipeline_kwargs):
        from transformers import pipeline

        self.pipe = pipeline("text-generation", model=model, **pipeline_kwargs)
        if getattr(self.pipe.tokenizer, "chat_template", None) is None:
            # The instruction goes as a chat message: refused here, not at the first batch once the diffusion
            # pipeline has loaded, with transformers' error naming no flag.
            raise NoChatTemplateError(f"--augmenter {model!r}: its tokenizer has no chat template to put the "
                                      "instruction in; give an instruction-tuned (chat) model")
        self.max_new_tokens = max_new_tokens

    def complete(self, instruction: str) -> str:
        messages = [{"role": "user", "content": instruction}]
        out = self.pipe(messages, max_new_tokens=self.max_new_tokens, do_sample=False)
        generated = out[0]["generated_text"]
        return generated[-1]["content"] if isinstance(generated, list) else str(generated)


class OpenAIAugmenter(PromptAugmenter):
    """Any OpenAI-compatible `/chat/completions` server (vLLM, TGI, llama.cpp, ...).

    The API key is read from `api_key` or the `OPENAI_API_KEY` environment variable and is never logged. A
    request the server could answer later (rate limited, overloaded, unreachable for a moment, timed out) is sent
    again up to `max_retries` times, after the server's Retry-After or a doubling wait from `retry_delay` seconds,
    as the OpenAI client does: one busy moment of the server would otherwise stop a day-long generation.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 max_tokens: int | None = 60, concurrency: int = 16, max_retries: int = 3, retry_delay: float = 1.0):
        self.max_retries, self.retry_delay = max_retries, retry_delay
        self.url = base_url.rstrip("/") + "/chat/completions"
        # Requests in flight at once: a serving engine (vLLM, TGI) batches them; one at a time, each waits a
        # whole generation for the one before.
        self.concurrency = concurrency
        self.model = model
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        # The local augmenter's budget: 30 words fit it, and a server that rambles costs a bounded time per prompt
        # (the answer past it is refused anyway). None leaves the server's own limit (reasoning models need more).
        self.max_tokens = max_tokens

    def complete(self, instruction: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        body = {"model": self.model, "messages": [{"role": "user", "content": instruction}], "temperature": 0}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        try:
            for attempt in range(self.max_retries + 1):
                try:
                    r = httpx.post(self.url, json=body, headers=headers, timeout=self.timeout)
                    r.raise_for_status()
                    return r.json()["choices"][0]["message"]["content"]
                except (httpx.HTTPStatusError, httpx.TransportError) as e:
                    wait = self._retry_wait(e, attempt)
                    if wait is None:
                        raise
                    logger.warning("the prompt augmenter at %s: %s; asking again in %.1f s (retry %d of %d)",
                                   self.url, _failure(e), wait, attempt + 1, self.max_retries)
                    time.sleep(wait)
        except httpx.HTTPStatusError as e:
            # The server says why in the body (vLLM and OpenAI: a model name it does not serve is a 404), which
            # the status line alone hides: the URL then looks wrong.
            raise ValueError(f"the prompt augmenter at {self.url} (--augmenter) answered HTTP "
                             f"{e.response.status_code} for model {self.model!r}: {e.response.text[:500]}") from e
        except httpx.TimeoutException as e:
            raise ValueError(f"the prompt augmenter at {self.url} (--augmenter) gave no answer within {self.timeout} s "
                             f"(model {self.model!r}): {type(e).__name__}: {e}") from e
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as e:  # unreachable, not the API
            raise ValueError(f"the prompt augmenter at {self.url} (--augmenter) did not answer as an OpenAI-compatible "
                             f"server does: {type(e).__name__}: {e}") from e

    def _retry_wait(self, error, attempt: int) -> float | None:
        """Seconds to wait before asking again, or None: the last attempt, or an answer that will not change (a
        wrong model name, a bad key)."""
        import httpx

        if attempt >= self.max_retries:
            return None
        if isinstance(error, httpx.HTTPStatusError):
            if error.response.status_code not in RETRIED_STATUS:
                return None
            after = error.response.headers.get("retry-after", "")
            if after.replace(".", "", 1).isdigit():
                return min(float(after), MAX_RETRY_WAIT)
        return self.retry_delay * 2 ** attempt

    def complete_many(self, instructions: list[str]) -> list[str]:
        if len(instructions) <= 1 or self.concurrency <= 1:
            return super().complete_many(instructions)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(self.concurrency, len(instructions))) as pool:
            return list(pool.map(self.complete, instructions))  # in order, whichever answers first


# Answers a server may not give next time: timeout, conflict, rate limit, its own error or overload.
RETRIED_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_WAIT = 60.0


def _failure(error) -> str:
    import httpx

    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    return type(error).__name__


def load_augmenter(spec: str | None) -> PromptAugmenter | None:
    """`None`/"" → no augmenter; "http(s)://host/v1#model" → OpenAI-compatible; else a transformers model."""
    if not spec:
        return None
    if spec.startswith(("http://", "https://")):
        url, _, model = spec.partition("#")
        if not model:
            raise ValueError("an OpenAI-compatible augmenter is given as URL#MODEL, e.g. http://localhost:8000/v1#qwen")
        return OpenAIAugmenter(url, model)
    try:
        return TransformersAugmenter(spec)
    except NoChatTemplateError:
        raise
    except (OSError, ValueError) as e:  # not a folder, not reachable offline, not a text-generation model
        raise ValueError(f"--augmenter {spec!r}: no text-generation model could be loaded from it ({type(e).__name__}: "
                         f"{e}); give a local model folder, a Hub id this machine can reach, or URL#MODEL") from e
