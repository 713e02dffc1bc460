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
