"""Files a later command reads back (results, card facts, recommendations, records): written whole or not at all.

A crash or a full disk in the middle of a plain write leaves a truncated file, and every later command on the folder
then fails to parse it (or a resume trusts it). Written beside it and renamed over it, the file is either the old
one or the new one; the rename is atomic on POSIX and Windows alike (`os.replace`).
"""

import os
import uuid
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
