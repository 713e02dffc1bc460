import hashlib
import subprocess
import sys


def test_a_vocabulary_build_goes_where_it_is_told_never_over_the_shipped_one(tmp_path):
    """The shipped tokenizer's ids are read by the shapes model and every tiny pipeline: `--help` (or a bare
    run) once rewrote it with a build that numbers every token anew."""
    from freeatm_hf.generate.clip_vocab import ASSET_DIR, load_tokenizer, main

    digest = lambda: {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in ASSET_DIR.iterdir()}  # noqa: E731
    before = digest()
    for args in (["--help"], []):
        res = subprocess.run([sys.executable, "-m", "freeatm_hf.generate.clip_vocab", *args], capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == (0 if args else 2) and "--output" in res.stdout + res.stderr
    assert digest() == before
    main(["--output", str(tmp_path / "tok"), "--vocab_size", "600"])
    tok = load_tokenizer(asset_dir=tmp_path / "tok")
    assert len(tok) <= 600 and tok.decode(tok("a golden retriever in block 5").input_ids,
                                          skip_special_tokens=True) == "a golden retriever in block 5"


def test_a_vocabulary_is_learnt_from_the_lines_given_and_loads_as_it_was_built(tmp_path):
    from freeatm_hf.generate.clip_vocab import SPECIAL, build, load_tokenizer, save_vocab

    vocab, merges = build(vocab_size=300, lines=["a Quokka, a wombat and A QUOKKA"] * 5)  # as CLIP, case-blind
    assert {"quokka</w>", "wombat</w>", *SPECIAL} <= set(vocab) and len(vocab) <= 300
    save_vocab(vocab, merges, tmp_path / "tok")
    tok = load_tokenizer(asset_dir=tmp_path / "tok")
    assert tok.tokenize("a quokka") == ["a</w>", "quokka</w>"]
    assert tok("a wombat").input_ids == [vocab[SPECIAL[0]], vocab["a</w>"], vocab["wombat</w>"], vocab[SPECIAL[1]]]
    # Every byte is in the vocabulary, seen in the lines or not: a word of unseen letters (ending as words of the
    # lines end) is no unknown token.
    assert tok.unk_token_id not in tok("zebra écrit").input_ids[1:-1]


def test_the_t5_tokenizer_cuts_at_the_length_asked():
    from freeatm_hf.generate.clip_vocab import load_t5_tokenizer

    t5 = load_t5_tokenizer(16)
    ids = t5(" ".join(["dog"] * 40), truncation=True).input_ids
    assert len(ids) == 16 and ids[-1] == t5.eos_token_id
