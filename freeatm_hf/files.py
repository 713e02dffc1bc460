"""Files a later command reads back (results, card facts, recommendations, records): written whole or not at all.

A crash or a full disk in the middle of a plain write leaves a truncated file, and every later command on the folder
then fails to parse it (or a resume trusts it). Written beside it, flushed to disk and renamed over it, the file is
either the old one or the new one (`os.replace` is atomic on POSIX; on Windows it fails while a reader holds the
file open, rather than leave it half written).
"""

import os
import stat
import uuid
from pathlib import Path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically; a symlink's target is what gets rewritten, keeping its permissions."""
    path = Path(os.path.realpath(path))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:  # as huggingface_hub writes cards
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
