"""Finding, launching and publishing the bundled Space (`spaces/mask_viewer`)."""

import importlib.util
from importlib import resources
from pathlib import Path


def space_dir(name: str = "mask_viewer") -> Path:
    """The Space folder, from the installed package (`_spaces`) or, in a source checkout, the repo root."""
    packaged = resources.files("freeatm_hf") / "_spaces" / name
    if (packaged / "app.py").is_file():
        return Path(str(packaged))
    source = Path(__file__).resolve().parents[1] / "spaces" / name
    if (source / "app.py").is_file():
        return source
    raise FileNotFoundError(f"Space {name!r} is neither in the package nor in {source.parent}")


def load_app(name: str = "mask_viewer"):
    """Import the Space's `app.py` as a module (it is a plain script, not part of the package)."""
    path = space_dir(name) / "app.py"
    spec = importlib.util.spec_from_file_location(f"freeatm_space_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def push_space(repo_id: str, name: str = "mask_viewer", private: bool = False, token: str | None = None) -> str:
    """Create or update a Gradio Space with the folder's files (the card's front matter declares the SDK)."""
    from huggingface_hub import HfApi

    from . import __version__

    api = HfApi(token=token, library_name="freeatm_hf", library_version=__version__)
    api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(space_dir(name)),
                               commit_message=f"Update Space with freeatm_hf {__version__}",
                               ignore_patterns=["**/__pycache__/**", "screenshots/**", "**/.freeatm/**"])
    return getattr(commit, "commit_url", str(commit))
