"""A loopback stand-in for the Hub's HTTP API: enough of create_repo / preupload / commit for
`HfApi.upload_folder`, recording what would have been committed. Every file is declared "regular", so
contents arrive inline in the commit payload (no LFS or Xet storage needed)."""

import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.repos: dict[tuple[str, str], dict] = {}  # (repo_type, repo_id) → {"private": bool, "files": {path: bytes}}
        self.commits: list[dict] = []
        self.auth_headers: list[str | None] = []
        self.unknown: list[str] = []
        self.validated: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _json(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self):
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self):
                hub.auth_headers.append(self.headers.get("Authorization"))
                body = self._body()
                path = self.path.split("?")[0]
                if path == "/api/repos/create":
                    req = json.loads(body)
                    repo_type = req.get("type") or "model"
                    repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                    private = req.get("visibility") == "private" or bool(req.get("private"))
                    hub.repos.setdefault((repo_type, repo_id), {"private": private, "files": {}, "request": req})
                    return self._json(200, {"url": f"{hub.url}/{repo_type}s/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    # The real Hub checks the card's metadata; we check that it is a YAML mapping.
                    import yaml

                    req = json.loads(body)
                    hub.validated.append(req["repoType"])
                    try:
                        meta = yaml.safe_load(req["content"].split("---")[1])
                        assert isinstance(meta, dict)
                    except Exception as e:  # noqa: BLE001
                        return self._json(400, {"errors": [{"message": f"invalid YAML: {e}"}]})
                    return self._json(200, {"errors": [], "warnings": []})
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+)/(preupload|commit)/(.+)", path)
                if not m:
                    hub.unknown.append(f"POST {self.path}")
                    return self._json(404, {"error": "not found"})
                repo_type, repo_id, action, _revision = m.groups()
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None:
                    return self._json(404, {"error": "Repository not found"})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                added = {}
                for x in lines:
                    if x["key"] == "file":
                        added[x["value"]["path"]] = base64.b64decode(x["value"]["content"])
                    elif x["key"] not in ("header",):
                        hub.unknown.append(f"commit op {x['key']}")
                repo["files"].update(added)
                hub.commits.append({"repo": (repo_type, repo_id), "message": header.get("summary"), "files": added})
                return self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{len(hub.commits):040d}",
                                        "commitOid": f"{len(hub.commits):040d}", "pullRequestUrl": None})

            def do_GET(self):
                hub.unknown.append(f"GET {self.path}")
                self._json(404, {"error": "not found"})

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
