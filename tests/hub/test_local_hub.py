"""The loopback Hub keeps every write inside its root, refusing what the Hub refuses."""

import base64
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from freeatm_hf.hub.local_hub import LocalHub


def post(url, body: bytes) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST")) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def commit(*ops) -> bytes:
    return "\n".join(json.dumps(x) for x in [{"key": "header", "value": {"summary": "s"}}, *ops]).encode()


@pytest.mark.parametrize("path", ["../../../escaped.txt", "/tmp/escaped.txt", "a/../../escaped.txt", "a\\..\\x",
                                  "C:/escaped.txt"])
def test_a_commit_path_that_climbs_out_of_the_repo_is_refused_and_nothing_written(tmp_path, path):
    root = tmp_path / "hub" / "root"
    victim = tmp_path / "hub" / "victim.txt"
    with LocalHub(root) as hub:
        assert post(f"{hub.url}/api/repos/create", json.dumps({"type": "dataset", "name": "x"}).encode())[0] == 200
        ok = {"key": "file", "value": {"path": "README.md", "content": base64.b64encode(b"hi").decode()}}
        assert post(f"{hub.url}/api/datasets/me/x/commit/main", commit(ok))[0] == 200
        victim.write_text("a user's file")
        for op in ({"key": "file", "value": {"path": path, "content": base64.b64encode(b"out").decode()}},
                   {"key": "deletedFile", "value": {"path": path}}, {"key": "deletedFolder", "value": {"path": path}}):
            code, body = post(f"{hub.url}/api/datasets/me/x/commit/main", commit(ok, op))
            assert code == 400 and "invalid path in repo" in body["error"]
    assert victim.read_text() == "a user's file"
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written == {"hub/victim.txt", "hub/root/datasets/me/x/README.md"}
    assert len(hub.commits) == 1


@pytest.mark.parametrize("name", ["..", "a--b", "x/../../y", ".hidden"])
def test_a_repo_name_the_hub_refuses_is_refused(tmp_path, name):
    with LocalHub(tmp_path / "root") as hub:
        code, body = post(f"{hub.url}/api/repos/create", json.dumps({"type": "model", "name": name}).encode())
    assert code == 400 and "invalid repo id" in body["error"] and not hub.repos


def test_what_the_stock_client_pushes_comes_back_as_pushed(in_process_hub, tmp_path):
    """`HfApi` (uploads, branches, listings, downloads) against the loopback Hub answers as the Hub: each file's
    bytes and size, the folders of a tree listing, the repo's own head commit, its visibility and namespace."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError

    files = {"README.md": b"# card\n", "data/a.txt": b"aaa", "data/sub/b.txt": b"bb", "database.txt": b"not data",
             "vit/x.bin": b"x" * 5, "vit2/y.bin": b"y" * 7}
    folder = tmp_path / "folder"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    api = HfApi(token="hf_mine")
    assert api.create_repo("me/r", repo_type="dataset", private=True).repo_id == "me/r"
    assert api.create_repo("org/pub", repo_type="dataset").repo_id == "org/pub"  # the namespace asked for
    assert in_process_hub.auth_headers[-1] == "Bearer hf_mine"
    first = api.upload_folder(repo_id="me/r", repo_type="dataset", folder_path=str(folder), commit_message="first")
    other = api.upload_folder(repo_id="org/pub", repo_type="dataset", folder_path=str(folder / "vit"))
    assert in_process_hub.commits[0]["message"] == "first"
    info = api.repo_info("me/r", repo_type="dataset", files_metadata=True)
    assert info.private is True and api.repo_info("org/pub", repo_type="dataset").private is False
    assert info.sha == first.oid and api.repo_info("org/pub", repo_type="dataset").sha == other.oid != first.oid
    assert {s.rfilename: s.size for s in info.siblings} == {rel: len(data) for rel, data in files.items()}
    for rel, data in files.items():  # each file its own bytes (the cache keys blobs by ETag), in the head's snapshot
        path = Path(hf_hub_download("me/r", rel, repo_type="dataset"))
        assert path.read_bytes() == data and info.sha in path.parts
    # The tree: the direct children of a folder, or everything below it; "data" is not a prefix of "database.txt".
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("me/r", repo_type="dataset")}
    assert top == {"README.md": "RepoFile", "data": "RepoFolder", "database.txt": "RepoFile", "vit": "RepoFolder",
                   "vit2": "RepoFolder"}
    below = {e.path for e in api.list_repo_tree("me/r", path_in_repo="data", repo_type="dataset", recursive=True)}
    assert below == {"data/a.txt", "data/sub", "data/sub/b.txt"}
    assert {e.path for e in api.list_repo_tree("me/r", path_in_repo="data", repo_type="dataset")} == {
        "data/a.txt", "data/sub"}
    # Creating a repo that exists leaves it as it is.
    api.create_repo("me/r", repo_type="dataset", private=True, exist_ok=True)
    assert set(api.list_repo_files("me/r", repo_type="dataset")) == set(files)
    # Deleting a folder deletes it alone, not the folders its name is a prefix of; a file likewise.
    api.delete_folder("vit", repo_id="me/r", repo_type="dataset")
    api.delete_file("database.txt", repo_id="me/r", repo_type="dataset")
    assert set(api.list_repo_files("me/r", repo_type="dataset")) == set(files) - {"vit/x.bin", "database.txt"}
    # Branches: made once, then committed to; a commit to a branch that does not exist is refused.
    api.create_branch("me/r", branch="v2", repo_type="dataset")
    with pytest.raises(HfHubHTTPError):
        api.create_branch("me/r", branch="v2", repo_type="dataset")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="v2.txt", repo_id="me/r", repo_type="dataset", revision="v2")
    with pytest.raises(HfHubHTTPError):
        api.upload_file(path_or_fileobj=b"no", path_in_repo="no.txt", repo_id="me/r", repo_type="dataset",
                        revision="nope")
    # A model repo's files are served at the Hub's unprefixed URL.
    api.create_repo("me/m")
    api.upload_file(path_or_fileobj=b"weights", path_in_repo="model.bin", repo_id="me/m")
    assert Path(hf_hub_download("me/m", "model.bin")).read_bytes() == b"weights"
    # A missing file of a repo, and a repo that does not exist, fail as the Hub's answers make them fail.
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError

    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("me/m", "missing.bin")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("me/none", "model.bin")


def test_a_commit_that_replaces_a_folder_keeps_the_new_files_also_on_disk(tmp_path, monkeypatch):
    """Deletions come before additions (as `upload_folder(delete_patterns=...)` relies on), and what is deleted
    goes from the root folder too."""
    import huggingface_hub.constants as c
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    root = tmp_path / "root"
    with LocalHub(root) as hub:
        monkeypatch.setattr(c, "ENDPOINT", hub.url)
        monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
        api = HfApi(token="hf_test")
        api.create_repo("me/d", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"old", path_in_repo="data/a.txt", repo_id="me/d", repo_type="dataset")
        api.upload_file(path_or_fileobj=b"gone", path_in_repo="notes.txt", repo_id="me/d", repo_type="dataset")
        api.create_commit("me/d", [CommitOperationDelete("data/"), CommitOperationAdd("data/a.txt", b"new")],
                          commit_message="replace", repo_type="dataset")
        api.delete_file("notes.txt", repo_id="me/d", repo_type="dataset")
        assert hub.repos[("dataset", "me/d")]["files"] == {"data/a.txt": b"new"}
    written = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert written == {"datasets/me/d/data/a.txt": b"new"}


def test_card_metadata_that_is_not_a_mapping_is_refused_as_the_hub_refuses_it(tmp_path):
    def validate(content):
        return post(f"{hub.url}/api/validate-yaml", json.dumps({"repoType": "model", "content": content}).encode())

    with LocalHub(tmp_path) as hub:
        for bad in ("---\n- a\n- list\n---\n# Title\n", "---\nlicense: [mit\n---\n# Title\n", "---\n42\n---\n"):
            code, body = validate(bad)
            assert code == 400 and "invalid YAML metadata" in body["errors"][0]["message"], bad
        for good in ("---\nlicense: mit\n---\n# Title\n", "# no metadata\n", "---\n---\n# empty block\n"):
            assert validate(good) == (200, {"errors": [], "warnings": []}), good
