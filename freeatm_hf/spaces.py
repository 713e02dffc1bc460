"""Finding, launching and publishing the bundled Space (`spaces/mask_viewer`)."""

import importlib.util
from pathlib import Path


def space_dir(name: str = "mask_viewer") -> Path:
    """The Space folder, from the installed package (`_spaces`) or, in a source checkout, the repo root."""
    from .shipped import shipped_path

    app = shipped_path("spaces", f"{name}/app.py")
    if app is None:
        raise FileNotFoundError(f"Space {name!r} is neither in the package nor in the repository's spaces/")
    return app.parent


def load_app(name: str = "mask_viewer"):
    """Import the Space's `app.py` as a module (it is a plain script, not part of the package)."""
    path = space_dir(name) / "app.py"
    spec = importlib.util.spec_from_file_location(f"freeatm_space_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def space_requirements() -> str:
    """requirements.txt for a pushed Space: freeatm_hf's own dependencies (the package itself travels beside
    app.py), without gradio, which the Space's `sdk_version` provides. From the source checkout's
    pyproject.toml when there is one (an editable install's metadata is as old as its last `pip install`),
    else from the installed metadata."""
    import freeatm_hf

    pyproject = Path(freeatm_hf.__file__).resolve().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        import tomllib

        deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    else:
        from importlib.metadata import requires

        deps = [r for r in requires("freeatm_hf") or [] if "extra ==" not in r]
    deps = [r for r in deps if not r.startswith("gradio")]
    return "# Written by `freeatm push-space`: freeatm_hf is uploaded beside app.py, these are its dependencies.\n" + \
        "\n".join(deps) + "\n"


def stage_space(dest: Path, name: str = "mask_viewer") -> Path:
    """Lay out what a Space repo holds: the Space folder, the freeatm_hf package beside `app.py` (so the Space
    runs the very version that pushed it, with its shipped shapes model, from no package index or git URL), and
    requirements.txt with the package's dependencies."""
    import shutil

    import freeatm_hf

    dest = Path(dest)
    shutil.copytree(space_dir(name), dest, ignore=shutil.ignore_patterns("__pycache__", "screenshots", ".freeatm"))
    shutil.copytree(Path(freeatm_hf.__file__).parent, dest / "freeatm_hf",
                    ignore=shutil.ignore_patterns("__pycache__", "_spaces", "_recipes", "*.pyc"))
    (dest / "requirements.txt").write_text(space_requirements())
    return dest


def push_space(repo_id: str, name: str = "mask_viewer", private: bool | None = None, token: str | None = None) -> str:
    """Create or update a Gradio Space (the card's front matter declares the SDK) from `stage_space`."""
    import tempfile

    from huggingface_hub import HfApi

    from . import __version__
    from .hub.push import create_repo, push_command, unreachable_said

    api = HfApi(token=token, library_name="freeatm_hf", library_version=__version__)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        # As `freeatm push` says it: a Hub that cannot be reached is one sentence with the command to run again.
        with unreachable_said(push_command("push-space", repo_id, private=private)):
            # A bare name lands under the token's user: upload to the id the Hub gave, not to the name given.
            repo_id = create_repo(api, repo_id, "space", private, space_sdk="gradio")
            stage_space(folder, name)
            commit = api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(folder),
                                       commit_message=f"Update Space with freeatm_hf {__version__}")
    return getattr(commit, "commit_url", str(commit))
