"""A checkpoint named on the command line, found before anything else is loaded."""

from pathlib import Path


def check_model_source(spec: str, flag: str = "--model") -> None:
    """Refuse, naming `flag`, a checkpoint that `from_pretrained` could not read: a folder without config.json, a
    file, or a name that is no folder here and no Hub model in reach (or in the cache, offline). transformers says
    of a mistyped absolute path that the repo id has bad characters, and it says so after the dataset has loaded."""
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            what = "a file" if path.is_file() else "a folder without config.json"
            raise ValueError(f"{flag} {spec} is {what}, not a checkpoint folder (what `freeatm train` writes into "
                             "its output_dir)")
        return
    from ..data.reading import looks_like_a_path

    if looks_like_a_path(spec):
        raise FileNotFoundError(f"{flag} {spec}: no such folder")
    from transformers.utils import cached_file

    try:
        cached_file(spec, "config.json")
    except (OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"{flag} {spec!r} is no folder here, and no Hub model that could be read ({reason}): "
                                "check the path, or the id and the network (HF_HUB_OFFLINE)") from None
