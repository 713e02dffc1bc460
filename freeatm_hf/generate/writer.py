"""Hub-layout dataset folder written shard by shard, safe to resume.

Layout (exactly what the Hub repo holds):

    README.md                               dataset card (written last, by the main process)
    data/train-00000-of-00012.parquet       shard i holds rows [i·rows_per_shard, (i+1)·rows_per_shard)
    .freeatm/settings.json                  what the rows depend on; a different run is refused
    .freeatm/lock                           held by the run writing the folder; a second one is refused
    .freeatm/tmp/                           shards being written (renamed into data/ when complete)

A shard is written to a temporary file and renamed into place, so a shard file that exists is complete:
its existence is the resume manifest. Shard ranges depend only on the settings, never on the number of
processes, so a crashed run can be resumed with a different world size and produce the same rows.
"""

import json
import math
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text_atomic

STATE_DIR = ".freeatm"
SETTINGS_FILE = "settings.json"
LOCK_FILE = "lock"
# Settings that do not change the rows: speed-only ones that older versions recorded, and advice to readers.
NOT_COMPARED = frozenset({"batch_size", "compile", "min_attention_peak"})
# Settings added later, with the value that older folders (which did not record them) were written with.
ADDED_SETTINGS = {"refine": "none", "revision": None, "scene_templates": 1, "label_space": 1}
# Settings that only some prompt modes use, now left unset by the others; older folders recorded a value anyway.
UNUSED_WHEN_UNSET = frozenset({"num_objects"})
# Settings added later whose value in older folders is unknown (a prompts file's hash, the dtype "auto" resolved
# to, the capture a model folder's recommendation resolved to, the perfect scenes' shard size): compared only where
# the folder recorded them.
COMPARED_WHEN_RECORDED = frozenset({"prompts_sha256", "resolved_dtype", "capture", "rows_per_shard"})


# Shard names are numbered in five digits, as `datasets` names them: past 99999 the names grow a digit, and the
# files (read in name order) would no longer be in row order.
MAX_SHARDS = 99999


class SettingsMismatchError(ValueError):
    pass


class FolderInUseError(ValueError):
    pass


@dataclass(frozen=True)
class Shard:
    index: int
    start: int
    stop: int


def deal(pending: list, rank: int, world_size: int) -> list:
    """`rank`'s share of the pending shards: dealt round-robin, so ranks finish together also when a crash left
    one rank's share done and another's not."""
    return pending[rank::world_size]


@contextmanager
def exclusive_folder(root: str | os.PathLike):
    """Held by a run's main process from before its settings are checked to its end. A second run started into the
    folder by mistake would otherwise replace the first's settings while it had no shard yet, remove its shards in
    the making as a crash's leftovers and write shards of the same names: a mix of both runs' rows, with both
    exiting 0. An OS lock (`flock`): a killed run holds it no longer, so a resume is never refused for it. None is
    held where there are no such locks (Windows; a network filesystem without them)."""
    root = Path(root)
    state = root / STATE_DIR
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if fcntl is None or (not state.is_dir() and root.is_dir() and any(root.iterdir())):
        yield  # (the latter: no generation, which the writer refuses; nothing is added to the user's folder)
        return
    state.mkdir(parents=True, exist_ok=True)
    with open(state / LOCK_FILE, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "its process is not recorded yet"
            raise FolderInUseError(f"{root} is being written by another freeatm generate ({holder}): wait for it "
                                   "to end (re-run it to resume), or use another output directory") from None
        except OSError:  # ENOLCK and the like: no locks here
            pass
        else:
            import socket

            f.truncate(0)
            f.write(f"process {os.getpid()} on {socket.gethostname()}")
            f.flush()
        yield


def shard_count(num_rows: int, rows_per_shard: int) -> int:
    """How many shards `num_rows` make, or a ValueError naming the flags when they cannot be written (`freeatm
    generate` asks before its prompts and pipeline load)."""
    if num_rows <= 0 or rows_per_shard <= 0:
        raise ValueError(f"--num_images and --rows_per_shard must be positive, got {num_rows} and {rows_per_shard}")
    count = math.ceil(num_rows / rows_per_shard)
    if count > MAX_SHARDS:
        raise ValueError(f"{num_rows} rows in shards of {rows_per_shard} make {count} shards, more than the "
                         f"{MAX_SHARDS} that shard names number in order: give --rows_per_shard "
                         f"{math.ceil(num_rows / MAX_SHARDS)} or more")
    return count


class DatasetWriter:
    def __init__(self, out_dir: str | os.PathLike, features, settings: dict, num_rows: int, rows_per_shard: int,
                 split: str = "train", is_main_process: bool = True, not_compared=()):
        self.root = Path(out_dir)
        self.features = features
        self.split = split
        self.num_rows = num_rows
        self.rows_per_shard = rows_per_shard
        self.num_shards = shard_count(num_rows, rows_per_shard)
        self.settings = json.loads(json.dumps(settings))  # normalized: tuples → lists
        self.not_compared = NOT_COMPARED | set(not_compared)  # also those the caller checks otherwise
        self._check_settings(is_main_process)
        self._check_features()
        self._check_layout()

    # -- layout ---------------------------------------------------------------------------------------------
    def shard_path(self, index: int) -> Path:
        return self.root / "data" / f"{self.split}-{index:05d}-of-{self.num_shards:05d}.parquet"

    @property
    def shards(self) -> list[Shard]:
        s = self.rows_per_shard
        return [Shard(i, i * s, min((i + 1) * s, self.num_rows)) for i in range(self.num_shards)]

    def pending(self, rank: int = 0, world_size: int = 1) -> list[Shard]:
        """Shards not yet written that belong to `rank` (`deal`)."""
        return deal([sh for sh in self.shards if not self.shard_path(sh.index).exists()], rank, world_size)

    def is_complete(self) -> bool:
        return all(self.shard_path(i).exists() for i in range(self.num_shards))

    # -- writing --------------------------------------------------------------------------------------------
    def write(self, shard: Shard, rows: list[dict]):
        import pyarrow.parquet as pq
        from datasets import Dataset

        if len(rows) != shard.stop - shard.start:
            raise ValueError(f"shard {shard.index} expects {shard.stop - shard.start} rows, got {len(rows)}")
        tmp_dir = self.root / STATE_DIR / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{shard.index:05d}-{uuid.uuid4().hex}.parquet"
        # The Arrow table carries the Features in its schema metadata, which `load_dataset` restores. Row groups
        # of 100 rows, as `datasets` uses for image data, keep streaming reads small.
        table = Dataset.from_list(rows, features=self.features).data.table
        pq.write_table(table, tmp, row_group_size=100)
        _fsync(tmp)
        final = self.shard_path(shard.index)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)

    def _check_settings(self, is_main_process: bool):
        path = self.root / STATE_DIR / SETTINGS_FILE
        if path.exists():
            # Only for settings this writer has: a writer that never had one (the toy's perfect scenes) resumes.
            from .config import canonical_setting

            added = {k: v for k, v in ADDED_SETTINGS.items() if k in self.settings}
            old = {k: canonical_setting(k, v) for k, v in {**added, **json.loads(path.read_text())}.items()}
            unused = {k for k in UNUSED_WHEN_UNSET if k in self.settings and self.settings[k] is None}
            unknown = {k for k in COMPARED_WHEN_RECORDED if k not in old}
            keys = (set(old) | set(self.settings)) - self.not_compared - unused - unknown
            diff = sorted(k for k in keys if old.get(k) != self.settings.get(k))
            if diff and not self.has_shards():
                # Nothing written yet (e.g. the first attempt ran out of memory while loading): nothing to keep
                # consistent with, so the new settings replace the old.
                self._write_settings(path, is_main_process)
                return
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} → {self.settings.get(k)!r}" for k in diff)
                if "scene_templates" in diff:  # no flag brings the old templates back
                    detail += "; scene_templates: the version of the scene prompts, another freeatm_hf's"
                if "label_space" in diff:  # nor the old class names
                    detail += "; label_space: the version of the ImageNet class names, another freeatm_hf's"
                raise SettingsMismatchError(
                    f"{self.root} holds a generation with other settings ({detail}). Use another output "
                    f"directory, or the original settings to resume it."
                )
            return
        if self.has_shards():
            raise SettingsMismatchError(f"{self.root}/data has Parquet files but no {STATE_DIR}/{SETTINGS_FILE}: "
                                        "not a freeatm generation to resume")
        # The card and examples would overwrite what is there (a README.md of the user's own, say).
        others = sorted(p.name for p in self.root.iterdir() if p.name != STATE_DIR) if self.root.is_dir() else []
        if others:
            raise SettingsMismatchError(
                f"{self.root} already holds files ({', '.join(others[:5])}{', …' if len(others) > 5 else ''}) and "
                f"is not a freeatm generation (no {STATE_DIR}/{SETTINGS_FILE}): choose a new or empty output_dir")
        self._write_settings(path, is_main_process)

    def _check_features(self):
        """Shards written by another version of the schema cannot share a folder with new ones: `load_dataset`
        would fail on the mix long after the run."""
        import pyarrow.parquet as pq
        from datasets import Features

        shard = next(iter(sorted((self.root / "data").glob("*.parquet"))), None)
        if shard is None:
            return
        old = Features.from_arrow_schema(pq.read_schema(shard))
        if old != self.features:
            new_cols, old_cols = _columns(self.features), _columns(old)
            detail = ", ".join([f"+{c}" for c in sorted(new_cols - old_cols)] + [f"-{c}" for c in sorted(old_cols - new_cols)])
            raise SettingsMismatchError(
                f"{shard} has another schema than this version of freeatm writes ({detail or 'types differ'}): "
                "generate into a new directory (the finished shards stay readable as they are).")

    def _check_layout(self):
        """The shards in data/ must be the ones this writer would write. A folder from before its shard size was
        recorded (the perfect scenes'), resumed with another, has shards of other names, which new ones would
        join (`load_dataset` reads every `data/train-*`: rows twice), or of the same names and other ranges,
        which would be skipped (rows lost). A shard's row count is in its footer: the first and last written are
        read, as another shard size changes the count of every shard but the last."""
        import pyarrow.parquet as pq

        ours = {self.shard_path(i).name: sh for i, sh in enumerate(self.shards)}
        found = sorted(p.name for p in (self.root / "data").glob("*.parquet"))
        stray = [name for name in found if name not in ours]
        if not stray:
            ends = {name: ours[name] for name in found[:1] + found[-1:]}
            stray = [name for name, sh in ends.items()
                     if pq.ParquetFile(self.shard_path(sh.index)).metadata.num_rows != sh.stop - sh.start]
        if stray:
            raise SettingsMismatchError(
                f"{self.root}/data/{stray[0]} is no shard of this layout ({self.num_rows} rows in shards of "
                f"{self.rows_per_shard}): resume with the num_images and rows_per_shard that wrote it, or use "
                "another output directory.")

    def has_shards(self) -> bool:
        """Whether any shard is written (by this run or one before it)."""
        return any((self.root / "data").glob("*.parquet"))

    def _write_settings(self, path: Path, is_main_process: bool):
        if is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(self.settings, indent=2, sort_keys=True))

    def clean_tmp(self):
        """Remove partial shards left by a crash (call on the main process before starting)."""
        for p in (self.root / STATE_DIR / "tmp").glob("*.parquet"):
            p.unlink(missing_ok=True)


def _columns(features, prefix: str = "") -> set[str]:
    """Dotted names of every field, nested ones included (`objects.attention_peak`)."""
    from datasets import List

    out = set()
    for k, v in features.items():
        out.add(prefix + k)
        inner = v.feature if isinstance(v, List) else v
        if isinstance(inner, dict):
            out |= _columns(inner, f"{prefix}{k}.")
    return out


def _fsync(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())
