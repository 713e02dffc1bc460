"""Uploading a finished folder: the only module that talks to the Hub.

The folder is already exactly what the repo holds, so pushing is `create_repo` + `upload_folder`
(which in huggingface_hub 2.x splits large folders into several commits and resumes when re-run).
The token comes from the usual places (`HF_TOKEN`, `hf auth login`) and is never logged.
"""

import logging
from pathlib import Path

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

# Resume state and temporary files never go to the Hub.
IGNORE = [".freeatm/**", "**/.freeatm/**", "**/__pycache__/**", "*.tmp", ".git/**"]


def push_folder(folder: str | Path, repo_id: str, repo_type: str = "dataset", private: bool = False,
                token: str | None = None, commit_message: str | None = None, revision: str | None = None) -> str:
    """Create the repo if needed and upload `folder`; returns the commit URL."""
    from .. import __version__

    folder = Path(folder)
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md card: finish the run before pushing")
    api = HfApi(token=token, library_name="freeatm_hf", library_version=__version__)
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision,
        commit_message=commit_message or f"Upload {repo_type} with freeatm_hf {__version__}", ignore_patterns=IGNORE,
    )
    url = getattr(commit, "commit_url", str(commit))
    logger.info("pushed %s to %s (%s)", folder, repo_id, url)
    return url
