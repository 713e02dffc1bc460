import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from freeatm_hf.prompts import OpenAIAugmenter, Prompt, PromptAugmenter, load_augmenter


class Fixed(PromptAugmenter):
    def __init__(self, answer):
        self.answer, self.seen = answer, []

    def complete(self, instruction):
        self.seen.append(instruction)
        return self.answer


def test_rewrite_keeps_nouns_and_relocates_their_spans():
    p = Prompt.from_nouns("a dog with a ball is playing in a park", ["dog", "ball"], labels=[1, 2])
    out = Fixed("A happy dog chases a red ball across the sunny park.")(p)
    assert out.text == "A happy dog chases a red ball across the sunny park."
    assert [(o.name, out.text[o.start : o.end], o.label) for o in out.objects] == [("dog", "dog", 1), ("ball", "ball", 2)]


def test_rewrite_that_drops_a_noun_keeps_the_template(caplog):
    p = Prompt.from_nouns("a dog with a ball", ["dog", "ball"])
    assert Fixed("A puppy plays outside.")(p) == p
    assert "a tracked noun is missing" in caplog.text


@pytest.mark.parametrize("answer, why", [
    ('Rewrite this image description: "dog", "hot dog". Answer with the sentence only.', "not a plain sentence"),
    ("Sure! Here is the sentence: A happy dog with a hot dog runs in a park.", "not a plain sentence"),
    ('A "dog" with a "hot dog" runs in a park.', "quoted"),
    ("A hot dog and another hot dog lie on a picnic table.", "'hot dog' appears 2 times, not 1"),  # no dog left
])
def test_answers_that_hold_the_nouns_but_not_the_objects_keep_the_template(answer, why, caplog):
    p = Prompt.from_nouns("a dog with a hot dog is running in a park", ["dog", "hot dog"])
    assert Fixed(answer)(p) == p
    assert why in caplog.text
    assert Fixed("A happy dog chases a hot dog across a sunny park.")(p).text.startswith("A happy dog")


def test_a_noun_that_became_part_of_another_class_name_keeps_the_template(caplog):
    p = Prompt.from_nouns("a lion with a mask is resting in a field", ["lion", "mask"])
    assert Fixed("A sea lion wearing a mask rests in a grassy field.")(p) == p
    assert Fixed("A lion wearing a ski mask rests in a field.")(p) == p
    assert "'lion' became part of 'sea lion'" in caplog.text and "'mask' became part of 'ski mask'" in caplog.text
    assert Fixed("A lion with a mask naps in a sunny field.")(p).text == "A lion with a mask naps in a sunny field."


def serve_chat(answer, server_class=HTTPServer):
    """A loopback `/chat/completions` server answering `answer(request body) -> content`; returns the server
    (serving in a thread) and the list of `(path, headers, body)` it received."""
    return serve_json(lambda body: (200, {"choices": [{"message": {"role": "assistant", "content": answer(body)}}]}),
                      server_class)


def serve_json(reply, server_class=HTTPServer):
    """A loopback server answering each POST with `reply(request body) -> (status, JSON object[, headers])`;
    returns the server (serving in a thread) and the list of `(path, headers, body)` it received."""
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append((self.path, dict(self.headers), body))
            status, answer, *extra = reply(body)
            data = json.dumps(answer).encode()
            self.send_response(status)
            for name, value in (extra[0] if extra else {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = server_class(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, requests


@pytest.fixture
def chat_server():
    server, requests = serve_chat(lambda body: "A tabby cat naps on a sofa.")
    yield f"http://127.0.0.1:{server.server_port}/v1", requests
    server.shutdown()


def test_openai_compatible_augmenter_over_loopback(chat_server):
    url, requests = chat_server
    aug = load_augmenter(f"{url}#tiny-llm")
    assert isinstance(aug, OpenAIAugmenter)
    aug._api_key = "sk-test"
    out = aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
    assert out.text == "A tabby cat naps on a sofa." and out.nouns == ["tabby cat", "sofa"]
    path, headers, body = requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "tiny-llm" and body["temperature"] == 0
    assert body["max_tokens"] == aug.max_tokens == 60
    assert headers["Authorization"] == "Bearer sk-test"
    assert '"tabby cat"' in body["messages"][0]["content"]


def test_augmenter_spec_errors():
    assert load_augmenter(None) is None
    with pytest.raises(ValueError, match="URL#MODEL"):
        load_augmenter("http://localhost:8000/v1")


def test_an_augmenter_that_cannot_be_reached_or_loaded_is_named(tmp_path):
    """A raw ConnectError or transformers' "couldn't connect to huggingface.co" did not say which flag was wrong."""
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    aug = load_augmenter(f"http://127.0.0.1:{port}/v1#m")
    aug.retry_delay = 0.0  # asked again, as a moment's outage would be, but unreachable throughout
    with pytest.raises(ValueError, match=rf"augmenter at http://127.0.0.1:{port}/v1/chat/completions \(--augmenter\) "
                                         "did not answer.*ConnectError"):
        aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
    with pytest.raises(ValueError, match="--augmenter '.*no-model': no text-generation model could be loaded"):
        load_augmenter(str(tmp_path / "no-model"))



def _tiny_causal_lm(folder, chat_template=None):
    """A random one-layer GPT-2 with a byte-level BPE learnt from a sentence: a local text-generation model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(["a dog with a ball is playing in a park"], trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tokenizer.chat_template = chat_template
    eos = tokenizer.eos_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2, n_positions=256,
                               bos_token_id=eos, eos_token_id=eos)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_a_local_model_without_a_chat_template_is_refused_when_loaded_not_at_its_first_prompt(tmp_path):
    """The instruction goes as a chat message: a base model's tokenizer has no template to render it, and
    transformers' error came at the first batch, once the diffusion pipeline had loaded, naming no flag."""
    with pytest.raises(ValueError, match=r"--augmenter '.*base': its tokenizer has no chat template"):
        load_augmenter(_tiny_causal_lm(tmp_path / "base"))
    chat = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    aug = load_augmenter(_tiny_causal_lm(tmp_path / "chat", chat_template=chat))
    assert isinstance(aug.complete("Rewrite: a dog with a ball"), str)  # the answer alone, not the messages


@pytest.mark.parametrize("answer, compound", [
    ("A sea-lion wearing a mask rests in a grassy field.", "sea-lion"),
    ("A lion wearing a mask-like hood rests in a field.", "mask-like"),
])
def test_a_noun_joined_into_a_hyphenated_compound_keeps_the_template(answer, compound, caplog):
    p = Prompt.from_nouns("a lion with a mask is resting in a field", ["lion", "mask"])
    assert Fixed(answer)(p) == p
    assert f"became part of {compound!r}" in caplog.text
    kept = Prompt.from_nouns("a well-fed lion with a mask", ["lion", "mask"])
    assert Fixed("A well-fed lion's mask lies in the grass.")(kept).text == "A well-fed lion's mask lies in the grass."


def test_a_null_or_overlong_answer_keeps_the_template(caplog):
    p = Prompt.from_nouns("a dog with a ball is playing in a park", ["dog", "ball"])
    assert Fixed(None)(p) == p
    assert "a tracked noun is missing" in caplog.text
    long = "On a bright summer afternoon " + "in a quiet park full of old trees " * 5 + "a dog with a ball is playing."
    assert Fixed(long)(p) == p
    assert "52 words, more than the 40 allowed" in caplog.text
    fits = "On a bright summer afternoon in a quiet park full of old trees a dog with a ball is playing."
    assert Fixed(fits)(p).text == fits


def test_a_servers_rewrites_are_asked_for_together_and_come_back_in_order():
    """One request at a time, every prompt waited a whole generation for the one before it."""
    import re
    import time
    from http.server import ThreadingHTTPServer

    # Answered only once all five are in flight at once: asked one at a time, the first would wait out the
    # barrier's timeout and the server would drop it.
    together = threading.Barrier(5, timeout=10)

    def answer(body):
        noun = re.search(r'exactly as written: "([^"]+)"', body["messages"][0]["content"]).group(1)
        together.wait()
        time.sleep(0.2 if noun == "cat" else 0.0)  # the first asked answers last
        return f"A {noun} rests on a table."

    server, _ = serve_chat(answer, ThreadingHTTPServer)
    try:
        aug = load_augmenter(f"http://127.0.0.1:{server.server_port}/v1#tiny-llm")
        nouns = ["cat", "dog", "sofa", "lamp", "kite"]
        prompts = [Prompt.from_nouns(f"a {n}", [n]) for n in nouns] + [Prompt.from_nouns("a quiet room", [])]
        out = aug.many(prompts)
    finally:
        server.shutdown()
    assert [p.text for p in out] == [f"A {n} rests on a table." for n in nouns] + ["a quiet room"]
    assert [p.nouns for p in out[:5]] == [[n] for n in nouns]
    assert not together.broken and together.n_waiting == 0  # all five met; the object-free prompt asked nothing


@pytest.mark.parametrize("answer", [
    "1. A dog chases a ball in a sunny park.",
    "1) A dog chases a ball in a sunny park.",
    "- A dog chases a ball in a sunny park.",
    "“A dog chases a ball in a sunny park.”",
    "'A dog chases a ball in a sunny park.'",
    '"A dog chases a ball in a sunny park".',
    "**A dog chases a ball in a sunny park.**",
    "`A dog chases a ball in a sunny park.`",
    '1. "A dog chases a ball in a sunny park."',
])
def test_a_rewrite_numbered_quoted_or_emphasized_is_taken_without_the_wrapping(answer):
    """A chat model's answer often comes as a list item, in curly quotes or in markdown: these went into the
    row's prompt (and to the diffusion model) as written, "1. A dog ..." and "“A dog ...”"."""
    p = Prompt.from_nouns("a dog with a ball is playing in a park", ["dog", "ball"], labels=[1, 2])
    out = Fixed(answer)(p)
    assert out.text == "A dog chases a ball in a sunny park."
    assert [(out.text[o.start : o.end], o.label) for o in out.objects] == [("dog", 1), ("ball", 2)]


def test_quotes_inside_a_rewrite_are_not_taken_for_its_wrapping(caplog):
    p = Prompt.from_nouns("a dog with a ball is playing in a park", ["dog", "ball"])
    inner = "A dog's red ball lies in the 'old' park."  # its own apostrophe and quotes stay
    assert Fixed(inner)(p).text == inner
    assert Fixed('A dog with a "ball"')(p) == p  # a quoted noun is refused, not half unquoted
    assert "'ball' quoted" in caplog.text
    wrapped = "'A dog's red ball lies in the park.'"  # the apostrophe within a word is no closing quote
    assert Fixed(wrapped)(p).text == "A dog's red ball lies in the park."


def test_a_servers_refusal_names_the_model_and_the_servers_reason():
    """A wrong model name is a 404 from vLLM and OpenAI alike: the error named only the URL's status, so the URL
    looked wrong; the server's own reason ("The model ... does not exist") and the model asked for were lost."""
    server, requests = serve_json(lambda body: (404, {"error": {"message": "The model `qwen-typo` does not exist.",
                                                                 "code": 404}}))
    try:
        aug = load_augmenter(f"http://127.0.0.1:{server.server_port}/v1#qwen-typo")
        with pytest.raises(ValueError, match=r"HTTP 404 for model 'qwen-typo': .*The model `qwen-typo` does not exist"):
            aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
        assert len(requests) == 1  # a wrong name stays wrong: not asked again
    finally:
        server.shutdown()


def test_a_server_that_answers_too_slowly_is_named_with_the_timeout():
    import time

    def slow(body):
        time.sleep(2)
        return "A tabby cat naps on a sofa."

    server, _ = serve_chat(slow)
    try:
        aug = OpenAIAugmenter(f"http://127.0.0.1:{server.server_port}/v1", "tiny-llm", timeout=0.5, max_retries=0)
        with pytest.raises(ValueError, match=r"no answer within 0.5 s.*ReadTimeout"):
            aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
    finally:
        server.shutdown()


def test_a_busy_server_is_asked_again_after_its_retry_after_and_named_when_it_stays_busy(caplog):
    """A rate limit or an overloaded server (429, 503) is a moment's state: one such answer among a day's
    requests stopped the whole generation."""
    answers = iter([(503, {"error": "overloaded"}), (429, {"error": "slow down"}, {"Retry-After": "0"}),
                    (200, {"choices": [{"message": {"role": "assistant", "content": "A tabby cat naps on a sofa."}}]})])
    server, requests = serve_json(lambda body: next(answers))
    try:
        aug = OpenAIAugmenter(f"http://127.0.0.1:{server.server_port}/v1", "tiny-llm", retry_delay=0.01)
        with caplog.at_level("WARNING", logger="freeatm_hf.prompts.augment"):
            out = aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
        assert out.text == "A tabby cat naps on a sofa." and len(requests) == 3
        assert "HTTP 503; asking again in 0.0 s (retry 1 of 3)" in caplog.text
        assert "HTTP 429; asking again in 0.0 s (retry 2 of 3)" in caplog.text
        aug.max_retries, aug.retry_delay = 2, 0.0
        requests.clear()
        answers = iter([(503, {"error": "overloaded"})] * 3)
        with pytest.raises(ValueError, match=r"answered HTTP 503 for model 'tiny-llm': .*overloaded"):
            aug(Prompt.from_nouns("a tabby cat on a sofa", ["tabby cat", "sofa"]))
        assert len(requests) == 3  # the first, then max_retries more
    finally:
        server.shutdown()
