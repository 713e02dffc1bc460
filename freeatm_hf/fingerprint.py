"""What a folder's files say about their content, cheaply: the identity that resumes, results and exports are
checked against."""

import hashlib
from pathlib import Path


def files_fingerprint(root: Path, files: list[Path], head: int = 1 << 20) -> str:
    """sha256 over `files` (each by path relative to `root`, size and content), where a file over 2·`head`
    bytes is hashed by its first and last `head` bytes: retrained weights differ everywhere, and reading a 24 GB
    Flux folder (or a BLIP checkpoint at every card write) in full would cost a minute."""
    digest = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.relative_to(root).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 2 * head:
                digest.update(fh.read())
            else:
                digest.update(fh.read(head))
                fh.seek(size - head)
                digest.update(fh.read(head))
    return digest.hexdigest()
