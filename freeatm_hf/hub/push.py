"""Uploading a finished folder: the only module that talks to the Hub.

The folder is already what the repo holds, so pushing is `create_repo` + `upload_folder` (which in
huggingface_hub 2.x splits large folders into several commits and resumes when re-run), plus one commit of
the files whose public copy differs: the card with its repo named, and a model's card facts without local
paths (`public_files`; the local folder is left as written).
The token comes from the usual places (`HF_TOKEN`, `hf auth login`) and is never logged.
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi

from ..files import write_text_atomic

logger = logging.getLogger(__name__)

# Resume state and temporary files never go to the Hub.
# `*.tmp/**`: what a crash left of a folder being written beside its place (an export).
IGNORE = [".freeatm/**", "**/.freeatm/**", "**/__pycache__/**", "*.tmp", "*.tmp/**", ".git/**"]
# A model repo gets the finished model, not Trainer's intermediate checkpoints (optimizer states, RNG), as
# Trainer's own push does.
MODEL_IGNORE = ["checkpoint-*", "checkpoint-*/**"]
# What a push replaces as a whole: repo files under these that the folder no longer has are deleted, so a
# regenerated dataset with fewer shards does not keep the old ones (the card's `data/train-*` would read both),
# and a retrained model keeps no weights or stock exports of its predecessor.
DATASET_SYNCED = ["data/**", "examples/**"]
MODEL_SYNCED = ["*.safetensors", "*.safetensors.index.json"]  # at the root; + each stock export's folder (`synced`)


PUSHED_FILE = ".freeatm/pushed.json"  # where a pushed folder remembers its repo (never uploaded: .freeatm/)


@dataclass(frozen=True)
class Pushed:
    """Where a folder went: the repo id with its namespace (as the Hub resolved it) and the last commit's URL."""

    repo_id: str
    url: str

    def __str__(self):
        return self.url


def push_folder(folder: str | Path, repo_id: str, repo_type: str = "dataset", private: bool | None = None,
                token: str | None = None, commit_message: str | None = None, revision: str | None = None,
                private_flag: str = "--private", retry: str | None = None) -> Pushed:
    """Create the repo (and the `revision` branch) if needed and upload `folder`, then in a second commit the
    files whose public copy differs (`public_files`); returns the repo id and the commit URL. A name without a
    namespace goes where the Hub puts it (the token's user), and the card and the note name that full id. The
    local folder is left as it is, but for a note of where it went (`PUSHED_FILE`). A Hub that cannot be reached
    raises `HubUnreachable` saying how to push again (`retry`: the command, default `freeatm push …`)."""
    from .. import __version__

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    if not (folder / "README.md").is_file():
        raise FileNotFoundError(f"{folder} has no README.md card: a generation or training run writes one when it "
                                "finishes (finish it before pushing); a folder made otherwise needs a card of its own")
    # `freeatm push` defaults to a dataset repo: a checkpoint pushed there would be a model nobody can load.
    looks = "model" if (folder / "config.json").is_file() else "dataset" if (folder / "data").is_dir() else None
    if repo_type in ("dataset", "model") and looks and looks != repo_type:
        hint = "freeatm push-model" if looks == "model" else "freeatm push (a dataset repo)"
        raise ValueError(f"{folder} looks like a {looks} folder ({'config.json' if looks == 'model' else 'data/'}) "
                         f"but would go to a {repo_type} repo: use {hint}")
    # Checked here: the push replaces the repo's weights or shards (`synced`), so a folder without them would
    # delete the published ones.
    if repo_type == "model" and not any(any(folder.glob(p)) for p in ("*.safetensors", "*.safetensors.index.json")):
        raise FileNotFoundError(f"{folder} holds no weights (*.safetensors): finish training before pushing, or the "
                                "push would delete the repo's published weights")
    if repo_type == "model":
        _check_weights(folder)
    if repo_type == "dataset" and not any((folder / "data").glob("*.parquet")):
        raise FileNotFoundError(f"{folder}/data holds no Parquet shards: finish the run before pushing, or the push "
                                "would delete the repo's published shards")
    stale = []
    if repo_type == "model":
        from .export import stale_exports

        stale = stale_exports(folder)
        if stale:
            logger.warning("%s: %s made from earlier weights, left out (and removed from the repo): push with "
                           "--exports to write them anew", folder, ", ".join(stale))
    api = HfApi(token=token, library_name="freeatm_hf", library_version=__version__)
    if retry is None:
        kind = [] if repo_type == "dataset" else ["--repo_type", repo_type]
        retry = push_command("push", folder, repo_id, *kind, private=private, revision=revision)
    with unreachable_said(retry):
        repo_id = create_repo(api, repo_id, repo_type, private, flag=private_flag)
        if revision:  # the Hub takes commits only to a branch that exists
            api.create_branch(repo_id, repo_type=repo_type, branch=revision, exist_ok=True)
        message = commit_message or f"Upload {repo_type} with freeatm_hf {__version__}"
        public = public_files(folder, repo_id, repo_type, revision)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, revision=revision,
                                   commit_message=message, ignore_patterns=IGNORE + list(public)
                                   + (MODEL_IGNORE if repo_type == "model" else [])
                                   + [p for rel in stale for p in (rel, f"{rel}/**")],
                                   delete_patterns=synced(repo_type, api, repo_id, revision))
        if public:
            from huggingface_hub import CommitOperationAdd

            commit = api.create_commit(repo_id=repo_id, repo_type=repo_type, revision=revision,
                                       operations=[CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)
                                                   for path, data in public.items()],
                                       commit_message=f"{message}: card")
        _record_push(folder, repo_id, repo_type, revision)
        url = getattr(commit, "commit_url", str(commit))
        logger.info("pushed %s to %s (%s)", folder, repo_id, url)
        return Pushed(repo_id, url)


def _check_weights(folder: Path):
    """Refuse the weights the push would replace the repo's with when no loader could read them (a save or copy cut
    short): sharded weights whose index names a shard the folder lacks, or a `*.safetensors` file at the root (or a
    shard an index names) that is incomplete (`_check_safetensors`)."""
    import json

    named = set()
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is no weight index ({type(e).__name__}: {e}): save the checkpoint again "
                             "before pushing") from None
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}, which {index.name} names: the checkpoint "
                                    "is incomplete; save it again (or finish training) before pushing")
        named |= {folder / s for s in shards}
    for path in sorted({*folder.glob("*.safetensors"), *named}):
        _check_safetensors(path)


# What the safetensors library itself refuses: a length beyond it is no header but a damaged file.
MAX_SAFETENSORS_HEADER = 100_000_000


def _check_safetensors(path: Path):
    """Refuse a file that is not a complete safetensors file: an 8-byte little-endian header length N, N bytes of
    JSON (tensor entries with `data_offsets`, optional `__metadata__`), then exactly the tensors' bytes. Only the
    header is read: weights can be many GB."""
    import json

    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes, shorter than a header length")
            n = int.from_bytes(head, "little")
            if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
                raise ValueError(f"a header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("its header is no JSON object")
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        if not all(isinstance(end, int) for end in ends):
            raise ValueError("a data offset is no integer")
    except (ValueError, KeyError, IndexError, TypeError) as e:  # json's and unicode's errors are ValueErrors
        raise ValueError(f"{path} is no complete safetensors file ({type(e).__name__}: {e}): save it again before "
                         "pushing; the push would replace the repo's weights with a file no loader can read") from None
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        how = "cut short in a save or copy" if size < expected else "bytes after its tensors"
        raise ValueError(f"{path} is no complete safetensors file ({size} bytes where its header says {expected}: "
                         f"{how}): save it again before pushing; the push would replace the repo's weights with a "
                         "file no loader can read")


class HubUnreachable(ConnectionError):
    """The Hub could not be reached (no network, a wrong HF_ENDPOINT, offline mode): the folder is kept as it is."""


def push_command(command: str, *words, private: bool | None = None, revision: str | None = None) -> str:
    """The `freeatm` command that pushes again as asked: without --private a repo not created yet would take the
    namespace's default visibility (public, for a user), and without --revision it would go to main. Quoted, so
    that a folder with a space in its path is one argument."""
    import shlex

    flags = (["--private"] if private else []) + (["--revision", revision] if revision else [])
    return shlex.join(["freeatm", command, *map(str, words), *flags])


@contextmanager
def unreachable_said(retry: str):
    """A push that cannot reach the Hub fails with one sentence naming the endpoint, the cause and the command
    that pushes again (a rerun uploads only what the repo lacks), not a transport traceback from deep in httpx."""
    import httpx2  # huggingface_hub 2.x's HTTP client: its transport errors are what an unreachable Hub raises
    from huggingface_hub import constants
    from huggingface_hub.errors import OfflineModeIsEnabled

    try:
        yield
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        raise HubUnreachable(f"could not reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {e}); nothing "
                             f"here is lost: push again with `{retry}` when the Hub can be reached") from e


def create_repo(api, repo_id: str, repo_type: str, private: bool | None, flag: str = "--private", **kwargs) -> str:
    """Create the repo if it does not exist (`private` None: the namespace's default visibility, an organisation's
    may be private); its id with the namespace the Hub gave it. The Hub keeps an existing repo's visibility whatever
    `private` says, so private asked of a public repo is refused before any upload."""
    repo_id = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **kwargs).repo_id
    if private and not api.repo_info(repo_id, repo_type=repo_type).private:
        raise ValueError(_public_repo(repo_id, repo_type, flag))
    return repo_id


def check_private_possible(repo_id: str, repo_type: str, private: bool | None, token: str | None = None,
                           flag: str = "--private"):
    """Before the work a push follows (training, generation, the first of two uploads): refuse private asked of a
    repo that exists and is public. Whatever cannot be asked now (no network, a bare name without a token) is
    asked again when the repo is created."""
    if not private:
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        public = not api.repo_info(repo_id, repo_type=repo_type).private
    except RepositoryNotFoundError:
        return
    except Exception as e:  # the Hub may be reachable again when the push comes
        logger.warning("could not check %s's visibility now (%s): checked again at the push", repo_id, e)
        return
    if public:
        raise ValueError(_public_repo(repo_id, repo_type, flag))


def _public_repo(repo_id: str, repo_type: str, flag: str) -> str:
    return (f"{repo_id} exists and is public; asking for a private repo does not change an existing one, so nothing "
            f"was uploaded: make it private on the Hub first (settings, or HfApi().update_repo_settings({repo_id!r}, "
            f"repo_type={repo_type!r}, private=True)), or push without {flag}")


def synced(repo_type: str, api, repo_id: str, revision: str | None = None) -> list[str] | None:
    """The repo files a push of a folder of `repo_type` replaces, as `upload_folder`'s delete patterns; for a model,
    the weights at the root of `repo_id` (listed) and the stock exports' folders."""
    if repo_type == "dataset":
        return DATASET_SYNCED
    if repo_type == "model":
        import fnmatch
        import glob

        from .export import STOCK_EXPORTS

        # fnmatch's `*` crosses `/`: `*.safetensors` as a pattern would also delete weights someone added in a
        # folder of their own (an EMA copy, a conversion). The checkpoint's own are the root's, named one by one.
        root = [f for f in api.list_repo_files(repo_id, repo_type="model", revision=revision)
                if "/" not in f and any(fnmatch.fnmatch(f, p) for p in MODEL_SYNCED)]
        return [glob.escape(f) for f in root] + sorted({f"{kind}/**" for kinds in STOCK_EXPORTS.values()
                                                         for kind in kinds})
    return None


def public_files(folder: Path, repo_id: str, repo_type: str, revision: str | None = None) -> dict[str, bytes]:
    """The files whose pushed copy differs from the local one: the card named for the repo and branch
    (`named_card`) and, for a model, the facts behind its card with each dataset named as a public card names it,
    never by its path on this machine (`public_facts`)."""
    files = {}
    card = named_card(folder, repo_id, repo_type, revision)
    if card:
        files["README.md"] = card.encode()
    if repo_type == "model":
        from .model_card import public_facts

        files.update(public_facts(folder))
    return files


PLACEHOLDERS = {"dataset": "<user>/<dataset>", "model": "<user>/<repo>", "space": "<user>/<space>"}


def named_card(folder: Path, repo_id: str, repo_type: str, revision: str | None = None) -> str | None:
    """The folder's card as the repo should hold it, or None when it needs no change. Cards are written before
    anyone knows where they will be pushed, so their load snippets say `<user>/<repo>`; the pushed copy names
    the repo (and the `revision` branch it goes to, `named_repo`), a freeatm dataset card also records it
    (`freeatm.repo_id`), and a model card names the datasets pushed since it was written by their ids
    (`with_pushed_datasets`). Only those change, so a card edited by hand keeps its edits."""
    from huggingface_hub import RepoCard

    text = (Path(folder) / "README.md").read_text()
    named = named_repo(text, PLACEHOLDERS.get(repo_type, "<user>/<repo>"), repo_id, revision)
    if repo_type == "model":
        from .model_card import with_pushed_datasets

        named = with_pushed_datasets(named, folder)
    if repo_type == "dataset":
        card = RepoCard(named)
        block = card.data.to_dict().get("freeatm")
        if isinstance(block, dict):
            card.data.freeatm = {**block, "repo_id": repo_id}
            named = str(card)
    return None if named == text else named


def named_repo(text: str, placeholder: str, repo_id: str, revision: str | None = None) -> str:
    """`text` with `placeholder` (and `placeholder-timm`, the timm export's repo) naming `repo_id`. Pushed to a
    branch, the card lives there, and so do the repo's files (and, by `push-model --timm --revision`, the timm
    export's): each loading call in its snippets names the branch, else it would read the main branch (another
    version, or nothing)."""
    import re

    if revision:
        ph = re.escape(placeholder)
        # timm reads a branch as part of the id; the others take `revision=`, after the call's other arguments
        # (`hf_hub_download(repo, filename)` takes the file positionally).
        text = re.sub(rf"hf-hub:{ph}([\w.-]*)", lambda m: f"hf-hub:{repo_id}{m[1]}@{revision}", text)
        text = re.sub(rf'"{ph}([\w.-]*)"([^()\n]*)\)',
                      lambda m: f'"{repo_id}{m[1]}"{m[2]}, revision="{revision}")', text)
    return text.replace(placeholder, repo_id)


def _record_push(folder: Path, repo_id: str, repo_type: str, revision: str | None = None):
    import json

    path = Path(folder) / PUSHED_FILE
    try:
        path.parent.mkdir(exist_ok=True)
        write_text_atomic(path, json.dumps({"repo_id": repo_id, "repo_type": repo_type, "revision": revision}))
    except OSError as e:  # a read-only folder pushes all the same; only the note is lost
        logger.warning("could not note the push in %s: %s", path, e)


def pushed_repo(folder: str | Path) -> str | None:
    """The repo a local folder was last pushed to (`push_folder` notes it), or None."""
    return _pushed(folder).get("repo_id")


def pushed_revision(folder: str | Path) -> str | None:
    """The branch a local folder was last pushed to, or None for the repo's main branch."""
    return _pushed(folder).get("revision")


def _pushed(folder: str | Path) -> dict:
    import json

    path = Path(folder) / PUSHED_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def push_timm_export(folder: str | Path, repo_id: str, private: bool | None = None, token: str | None = None,
                     source_repo: str | None = None, revision: str | None = None) -> Pushed:
    """Export the checkpoint's image encoder to timm (`export_timm`) with a small card, and push it as its own
    model repo: what `timm.create_model("hf-hub:<repo_id>", pretrained=True)` reads (timm wants config.json
    at a repo's root, so the export cannot share the freeatm repo). `private` None: private when `source_repo` is."""
    import tempfile

    from huggingface_hub import ModelCard, ModelCardData
    from transformers import AutoModel

    from .. import models  # noqa: F401  (registers the Auto classes)
    from .export import export_timm, trained_image_size
    from .model_card import DESCRIPTIONS, card_facts, training_metadata

    model = AutoModel.from_pretrained(str(folder))
    flag = "--private"
    if private is None and source_repo:
        # The export holds the checkpoint's weights: a new repo would take the namespace's default visibility,
        # and a private checkpoint's weights would go public.
        retry = push_command("push-model", folder, source_repo, revision=revision) + " --timm"
        from huggingface_hub.errors import RepositoryNotFoundError

        with unreachable_said(retry):
            try:
                source_private = HfApi(token=token).repo_info(source_repo, repo_type="model").private
            except RepositoryNotFoundError:  # only named, not pushed (yet)
                source_private = False
        if source_private:
            private, flag = True, f"--timm ({source_repo} is private)"
    hub_id = f"{repo_id}@{revision}" if revision else repo_id  # timm reads a branch as "hf-hub:<repo>@<branch>"
    method = model.config.model_type.removeprefix("freeatm_")
    # The same weights as the checkpoint's card describes: its training datasets and whether the masks were used.
    trained = training_metadata(model.config, (card_facts(folder) or {}).get("data") or {})
    with tempfile.TemporaryDirectory() as tmp:
        export_timm(model, tmp, image_size=trained_image_size(folder))
        # Pushed to a branch, so was the checkpoint: its repo page (main) may hold other weights, or none.
        page = f"https://huggingface.co/{source_repo}" + (f"/tree/{revision}" if revision else "")
        name = f"{source_repo} (branch `{revision}`)" if revision else source_repo
        source = f"[{name}]({page})" if source_repo else "a freeatm_hf checkpoint"
        card = ModelCard.from_template(
            ModelCardData(library_name="timm", license="apache-2.0", pipeline_tag="image-feature-extraction",
                          tags=[*trained["tags"], "image-feature-extraction"], datasets=trained["datasets"]),
            template_str="---\n{{ card_data }}\n---\n\n# {{ title }}\n\n{{ body }}\n",
            title=f"{repo_id.split('/')[-1]}: the image encoder of {DESCRIPTIONS[method][0]} (freeatm_hf) for timm",
            body=f"The image encoder of {source}, exported with `freeatm_hf.hub.export.export_timm`; no classifier.\n\n"
                 f"```python\nimport timm\nmodel = timm.create_model(\"hf-hub:{hub_id}\", pretrained=True)\n"
                 f"cfg = timm.data.resolve_data_config({{}}, model=model)  # the input size, mean and std it "
                 f"was trained with\n```\n")
        card.save(str(Path(tmp) / "README.md"))
        # The export lives in a temporary folder: pushing again starts from the checkpoint.
        retry = (push_command("push-model", folder, source_repo, private=private, revision=revision) + " --timm"
                 if source_repo else None)
        return push_folder(tmp, repo_id, repo_type="model", private=private, token=token, revision=revision,
                           commit_message="Upload the timm export of a freeatm_hf checkpoint", retry=retry,
                           private_flag=flag)
