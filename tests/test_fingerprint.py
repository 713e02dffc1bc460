"""A folder's fingerprint: what resumes, results and exports are checked against, stored in their records."""

import hashlib


def reference(root, files, head):
    """The fingerprint as files_fingerprint documents it, computed independently: sha256 over each file's path
    relative to root, its size, and its content (a file over 2·head bytes by its first and last head bytes)."""
    digest = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        digest.update(f.relative_to(root).as_posix().encode() + b"\0" + str(len(data)).encode() + b"\0")
        digest.update(data if len(data) <= 2 * head else data[:head] + data[-head:])
    return digest.hexdigest()


def test_a_fingerprint_is_the_documented_hash_and_sees_every_change_a_retrain_makes(tmp_path):
    from freeatm_hf.fingerprint import files_fingerprint

    head = 8
    small, large = tmp_path / "a.bin", tmp_path / "unet" / "b.bin"
    large.parent.mkdir()
    small.write_bytes(bytes(range(12)))  # under 2·head: read whole
    large.write_bytes(bytes(range(40)))  # over 2·head: its two ends
    files = [small, large]
    fp = lambda: files_fingerprint(tmp_path, files, head)  # noqa: E731
    before = fp()
    # Records written by an earlier run must still match: the value is the documented one.
    assert before == reference(tmp_path, files, head)
    small.write_bytes(bytes(range(9)) + b"\xff" + bytes(range(10, 12)))  # a middle byte of a small file
    assert fp() != before
    small.write_bytes(bytes(range(12)))
    large.write_bytes(bytes(range(39)) + b"\xff")  # the end of a large file (the last tensors of a checkpoint)
    assert fp() != before
    large.write_bytes(bytes(range(20)) + b"\x00" + bytes(range(20, 40)))  # grown in the unread middle: its size
    assert fp() != before
    large.write_bytes(bytes(range(40)))
    assert fp() == before
    small.rename(tmp_path / "c.bin")  # the same bytes under another name is another folder
    assert files_fingerprint(tmp_path, [tmp_path / "c.bin", large], head) != before
