"""The loopback Hub keeps every write inside its root, refusing what the Hub refuses."""

import base64
import json
import urllib.error
import urllib.request

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
