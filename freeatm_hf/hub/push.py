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
    name_the_repo(folder, repo_id, repo_type)
    commit = api.upload_folder(
        repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision,
        commit_message=commit_message or f"Upload {repo_type} with freeatm_hf {__version__}", ignore_patterns=IGNORE,
    )
    url = getattr(commit, "commit_url", str(commit))
    logger.info("pushed %s to %s (%s)", folder, repo_id, url)
    return url


PLACEHOLDERS = {"dataset": "<user>/<dataset>", "model": "<user>/<repo>", "space": "<user>/<space>"}


def name_the_repo(folder: Path, repo_id: str, repo_type: str):
    """Cards are written before anyone knows where they will be pushed, so their load snippets say
    `<user>/<repo>`: give the folder's card its repo id now (the folder is what the repo holds). A freeatm
    model card is rendered again from its saved facts; a dataset card also records the id (`freeatm.repo_id`),
    so that a model trained on the local folder can name the dataset by its Hub id in its own card."""
    readme = folder / "README.md"
    if repo_type == "model" and (folder / "card_info.json").is_file() and (folder / "config.json").is_file():
        from transformers import AutoConfig

        from .. import models  # noqa: F401  (registers the freeatm configs)
        from .model_card import write_model_card

        write_model_card(folder, AutoConfig.from_pretrained(folder), repo_id=repo_id)
        return
    text = readme.read_text()
    named = text.replace(PLACEHOLDERS.get(repo_type, "<user>/<repo>"), repo_id)
    if repo_type == "dataset" and "\nfreeatm:" in text.split("\n---", 1)[0]:
        from huggingface_hub import DatasetCard

        card = DatasetCard(named)
        card.data.freeatm = {**card.data.to_dict()["freeatm"], "repo_id": repo_id}
        named = str(card)
    if named != text:
        readme.write_text(named)


def push_timm_export(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                     source_repo: str | None = None) -> str:
    """Export the checkpoint's image encoder to timm (`export_timm`) with a small card, and push it as its own
    model repo: what `timm.create_model("hf-hub:<repo_id>", pretrained=True)` reads (timm wants config.json
    at a repo's root, so the export cannot share the freeatm repo)."""
    import tempfile

    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoModel

    from .. import models  # noqa: F401  (registers the Auto classes)
    from .export import export_timm

    model = AutoModel.from_pretrained(str(folder))
    method = model.config.model_type.removeprefix("freeatm_")
    with tempfile.TemporaryDirectory() as tmp:
        export_timm(model, tmp)
        source = f"[{source_repo}](https://huggingface.co/{source_repo})" if source_repo else "a freeatm_hf checkpoint"
        card = ModelCard.from_template(
            ModelCardData(library_name="timm", license="apache-2.0", pipeline_tag="image-feature-extraction",
                          tags=["freeatm", method, "self-supervised", "image-feature-extraction"]),
            template_str="---\n{{ card_data }}\n---\n\n# {{ title }}\n\n{{ body }}\n",
            title=f"{repo_id.split('/')[-1]}: the image encoder of {method} (freeatm_hf) for timm",
            body=f"The image encoder of {source}, exported with `freeatm_hf.hub.export.export_timm`; no classifier.\n\n"
                 f"```python\nimport timm\nmodel = timm.create_model(\"hf-hub:{repo_id}\", pretrained=True)\n"
                 f"cfg = timm.data.resolve_data_config({{}}, model=model)  # the input size, mean and std it "
                 f"was trained with\n```\n")
        card.save(str(Path(tmp) / "README.md"))
        return push_folder(tmp, repo_id, repo_type="model", private=private, token=token,
                           commit_message="Upload the timm export of a freeatm_hf checkpoint")
