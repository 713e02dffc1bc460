"""A small CLIP-style BPE vocabulary made offline, so tiny pipelines need no download.

    python -m freeatm_hf.generate.clip_vocab --output my_tokenizer   # a new vocab.json + merges.txt

It is trained with `tokenizers` on text from the label space and the scene templates, using the same
normalizer and pre-tokenizer as `transformers.CLIPTokenizer`, so it exercises real sub-word splits
("golden retriever" → several tokens) while staying a few thousand entries.

The shipped `assets/clip_tokenizer` is an earlier build with the ten digits appended (ids 4096–4105), kept as it
is: the embedded shapes model, the tests' tiny pipelines and every BLIP trained from scratch read its ids, and a
new build numbers every token anew.
"""

import json
from pathlib import Path

ASSET_DIR = Path(__file__).parent / "assets" / "clip_tokenizer"
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def corpus() -> list[str]:
    from ..prompts import LabelSpace, ScenePrompts
    from ..prompts.scenes import ACTIVITIES, PLACES

    lines = [", ".join([c.name, *c.synonyms]) for c in LabelSpace.imagenet().classes]
    lines += [" ".join(v) for v in ACTIVITIES.values()] + [" ".join(v) for v in PLACES.values()]
    lines += [p.text for p in ScenePrompts(seed=0).take(2000)]
    # CLIP's pre-tokenizer splits numbers into single digits: without them every block number of BLIP's
    # position prompts ("The dog is in block 5.") would be the unknown token, and all blocks alike.
    lines += [" ".join("0123456789")] * 10
    return lines


def build(vocab_size: int = 4096, lines: list[str] | None = None) -> tuple[dict[str, int], list[str]]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    template = CLIPTokenizer()._tokenizer  # CLIP's normalizer and pre-tokenizer
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = template.normalizer
    tok.pre_tokenizer = template.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL, end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines if lines is not None else corpus(), trainer)
    state = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    return state["vocab"], merges


def load_tokenizer(model_max_length: int = 77, asset_dir: Path = ASSET_DIR):
    from transformers import CLIPTokenizer

    vocab = json.loads((asset_dir / "vocab.json").read_text())
    merges = [tuple(m.split(" ")) for m in (asset_dir / "merges.txt").read_text().splitlines() if m]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def save_vocab(vocab: dict[str, int], merges: list[str], asset_dir: Path):
    asset_dir.mkdir(parents=True, exist_ok=True)
    (asset_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (asset_dir / "merges.txt").write_text("\n".join(merges) + "\n")


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m freeatm_hf.generate.clip_vocab", description=__doc__.splitlines()[0])
    p.add_argument("--output", required=True, type=Path,
                   help="folder for vocab.json and merges.txt (not the package's own: see the module docstring)")
    p.add_argument("--vocab_size", type=int, default=4096)
    args = p.parse_args(argv)
    vocab, merges = build(args.vocab_size)
    save_vocab(vocab, merges, args.output)
    print(f"wrote {len(vocab)} tokens, {len(merges)} merges to {args.output}")


if __name__ == "__main__":
    main()


def load_t5_tokenizer(model_max_length: int = 256):
    """A T5 (Unigram, sentencepiece-style "▁word") tokenizer made offline from the same vocabulary's whole
    words plus single characters, for tiny SD3 / Flux pipelines."""
    from transformers import T5Tokenizer

    words = sorted({t[:-4] for t in json.loads((ASSET_DIR / "vocab.json").read_text())
                    if t.endswith("</w>") and t[:-4].isalpha()})
    chars = sorted({c for w in words for c in w} | set("abcdefghijklmnopqrstuvwxyz'-,."))
    vocab = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("▁" + w, -1.0) for w in words] + [("▁", -4.0)]
             + [(c, -8.0) for c in chars])
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
