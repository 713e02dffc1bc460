"""A loopback stand-in for the Hub's upload API, for trying pushes offline (and for tests).

    python -m freeatm_hf.hub.local_hub --root outputs/local_hub --port 8765 &
    HF_ENDPOINT=http://127.0.0.1:8765 HF_TOKEN=hf_local freeatm push outputs/scenes me/scenes

It answers `create_repo`, the `preupload` and `commit` calls of `upload_folder` (every file declared
"regular", so contents arrive inline: no LFS or Xet storage) and the card's YAML validation, and writes each
repo to `ROOT/{models,datasets,spaces}/<repo_id>/`, so what would have been published can be opened
with the stock loaders (`load_dataset(ROOT/datasets/me/scenes)`). It also serves repo info, the tree listing
and file downloads, so `snapshot_download` and `load_dataset("me/scenes")` bring a pushed repo back through
`HF_ENDPOINT`. It only listens on loopback.
"""

import argparse
import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import unquote

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from huggingface_hub.utils.sha import git_hash

USER = "me"  # the one user of a loopback Hub


class LocalHub:
    def __init__(self, root: str | Path | None = None, port: int = 0):
        self.root = Path(root) if root else None
        self.repos: dict[tuple[str, str], dict] = {}
        self.commits: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.validated: list[str] = []
        self.unknown: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def repo_dir(self, repo_type: str, repo_id: str) -> Path:
        return self.root / f"{repo_type}s" / repo_id

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, code, obj, headers: dict | None = None):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                hub.auth_headers.append(self.headers.get("Authorization"))
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                try:
                    return self._post(path, body)
                except ValueError as e:  # a name or path the Hub refuses too
                    return self._json(400, {"error": str(e)})

            def _post(self, path: str, body: bytes):
                if path == "/api/repos/create":
                    return self._json(200, hub._create(json.loads(body)))
                if path == "/api/validate-yaml":
                    return self._json(*hub._validate(json.loads(body)))
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+)/branch/([^/]+)", path)
                if m:  # branches are names only: every branch serves the repo's one set of files
                    repo = hub.repos.get((m.group(1), m.group(2)))
                    if repo is None:
                        return self._json(404, {"error": "Repository not found"})
                    if unquote(m.group(3)) in repo["branches"]:
                        return self._json(409, {"error": "Reference already exists"})
                    repo["branches"].add(unquote(m.group(3)))
                    return self._json(200, {})
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+)/(preupload|commit)/(.+)", path)
                if not m:
                    hub.unknown.append(f"POST {self.path}")
                    return self._json(404, {"error": "not found"})
                repo_type, repo_id, action, revision = m.groups()
                if (repo_type, repo_id) not in hub.repos:
                    return self._json(404, {"error": "Repository not found"})
                if unquote(revision) not in hub.repos[(repo_type, repo_id)]["branches"]:
                    return self._json(404, {"error": f"Invalid rev id: {unquote(revision)}"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    held = hub.repos[(repo_type, repo_id)]["files"]
                    # As the Hub: a file the repo holds comes with its git oid, so that the client leaves an
                    # unchanged one out of the commit (and makes no empty commit).
                    said = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                             **({"oid": git_hash(held[f["path"]])} if f["path"] in held else {})} for f in files]
                    return self._json(200, {"files": said})
                return self._json(200, hub._commit(repo_type, repo_id, body))

            def do_GET(self):
                self._read(send_body=True)

            def do_HEAD(self):
                self._read(send_body=False)

            def _read(self, send_body: bool):
                """Repo info and file downloads, so that what was pushed comes back through `HF_ENDPOINT`
                (`snapshot_download`, `hf_hub_download`)."""
                path = self.path.split("?")[0]
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+?)(?:/revision/([^/]+))?", path)
                if m and (m.group(1), m.group(2)) in hub.repos:
                    repo_type, repo_id, _ = m.groups()
                    repo = hub.repos[(repo_type, repo_id)]
                    files = repo["files"]
                    return self._json(200, {"id": repo_id, "sha": hub.head(repo_type, repo_id), "private": repo["private"],
                                            "siblings": [{"rfilename": f, "size": len(d)} for f, d in files.items()]})
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+?)/tree/[^/]+(?:/(.*))?", path)
                if m and (m.group(1), m.group(2)) in hub.repos:
                    files = hub.repos[(m.group(1), m.group(2))]["files"]
                    recursive = "recursive=true" in self.path.lower() or "recursive=1" in self.path
                    return self._json(200, tree(files, unquote(m.group(3) or "").strip("/"), recursive))
                m = re.fullmatch(r"/(?:(dataset|space)s/)?(.+)/resolve/([^/]+)/(.+)", path)
                key = (m.group(1) or "model", m.group(2)) if m else None
                if key in hub.repos and unquote(m.group(4)) in hub.repos[key]["files"]:
                    data = hub.repos[key]["files"][unquote(m.group(4))]
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                    self.send_header("X-Repo-Commit", hub.head(*key))
                    self.end_headers()
                    if send_body:
                        self.wfile.write(data)
                    return None
                hub.unknown.append(f"{self.command} {self.path}")
                # As the Hub answers: a missing file of a repo that exists is an EntryNotFound (what a client
                # treats as "no such file", e.g. `datasets` for a repo without a README), anything else a
                # RepoNotFound.
                code = "EntryNotFound" if key in hub.repos else "RepoNotFound"
                if send_body:
                    return self._json(404, {"error": "not found"}, headers={"X-Error-Code": code})
                self.send_response(404)
                self.send_header("X-Error-Code", code)
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler

    def head(self, repo_type: str, repo_id: str) -> str:
        """The repo's last commit id (commits are numbered across the server)."""
        n = max((i for i, c in enumerate(self.commits, 1) if c["repo"] == (repo_type, repo_id)), default=0)
        return f"{n:040d}"

    def _create(self, req: dict) -> dict:
        repo_type = req.get("type") or "model"
        # As on the Hub, a name without a namespace goes under the token's user (here always USER).
        repo_id = f"{req.get('organization') or USER}/{req['name']}"
        try:  # the Hub's own rule for names; it also keeps every repo folder inside the root
            validate_repo_id(repo_id)
        except HFValidationError as e:
            raise ValueError(f"invalid repo id {repo_id!r}: {e}") from None
        private = req.get("visibility") == "private" or bool(req.get("private"))
        self.repos.setdefault((repo_type, repo_id), {"private": private, "files": {}, "request": req,
                                                     "branches": {"main"}})
        return {"url": f"{self.url}/{repo_type}s/{repo_id}", "name": repo_id}

    def _validate(self, req: dict):
        import yaml

        self.validated.append(req["repoType"])
        from huggingface_hub.repocard import REGEX_YAML_BLOCK

        block = REGEX_YAML_BLOCK.search(req["content"])
        try:  # as the Hub: a card without a metadata block is valid, a block must be a mapping
            meta = yaml.safe_load(block.group(2)) if block else {}
            assert isinstance(meta, dict) or (block and meta is None)
        except Exception as e:  # noqa: BLE001 - any parse problem is the caller's error
            return 400, {"errors": [{"message": f"invalid YAML metadata: {e}"}]}
        return 200, {"errors": [], "warnings": []}

    def _commit(self, repo_type: str, repo_id: str, body: bytes) -> dict:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = self.repos[(repo_type, repo_id)]["files"]
        added, deleted = {}, []
        for x in lines:
            if x["key"] != "header":
                _check_repo_path(x["value"]["path"])
            if x["key"] == "file":
                added[x["value"]["path"]] = base64.b64decode(x["value"]["content"])
            elif x["key"] == "deletedFile":
                deleted.append(x["value"]["path"])
            elif x["key"] == "deletedFolder":
                prefix = x["value"]["path"].rstrip("/") + "/"
                deleted += [f for f in files if f.startswith(prefix)]
            elif x["key"] != "header":
                self.unknown.append(f"commit op {x['key']}")
        for rel in deleted:
            files.pop(rel, None)
            if self.root is not None:
                (self.repo_dir(repo_type, repo_id) / rel).unlink(missing_ok=True)
        files.update(added)
        if self.root is not None:
            for rel, data in added.items():
                dst = self.repo_dir(repo_type, repo_id) / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(data)
        self.commits.append({"repo": (repo_type, repo_id), "message": header.get("summary"), "files": added,
                             "deleted": deleted})
        n = len(self.commits)
        return {"commitUrl": f"{self.url}/{repo_id}/commit/{n:040d}", "commitOid": f"{n:040d}", "pullRequestUrl": None}

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _check_repo_path(path: str):
    """A file's path in a repo, as the Hub accepts it: relative, in forward slashes, never climbing out."""
    parts = PurePosixPath(path).parts
    if not path or "\\" in path or PurePosixPath(path).is_absolute() or ".." in parts or PureWindowsPath(path).drive:
        raise ValueError(f"invalid path in repo: {path!r}")


def tree(files: dict[str, bytes], under: str, recursive: bool) -> list[dict]:
    """The Hub's tree listing of `under`: its files and folders (with `recursive`, all of them below it, else
    the direct children), as `HfFileSystem` (and so `load_dataset` of a repo id) lists a repo."""
    prefix = f"{under}/" if under else ""
    entries: dict[str, dict] = {}
    for path, data in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix):].split("/")
        for depth in range(1, len(parts)):  # the folders on the way
            folder = prefix + "/".join(parts[:depth])
            if recursive or depth == 1:
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest()})
        if recursive or len(parts) == 1:
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
    return list(entries.values())


def main(argv=None):
    p = argparse.ArgumentParser(description="Serve a loopback Hub that writes pushed repos to a folder.")
    p.add_argument("--root", required=True)
    p.add_argument("--port", type=int, default=8765)
    args = p.parse_args(argv)
    hub = LocalHub(args.root, args.port)
    print(hub.url, flush=True)
    hub.server.serve_forever()


if __name__ == "__main__":
    main()
