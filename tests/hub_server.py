"""A stand-in for the Hugging Face Hub on 127.0.0.1 that records every request huggingface_hub
makes, for testing `curate publish` with HF_ENDPOINT pointed at it.

It answers the endpoints an upload uses: create a repo, validate a card's YAML, create a
branch, list a repo's files, the pre-upload check and the commit. It asks for every file inline
in the commit (`uploadMode: regular`, as the Hub does for small files), so the recorded commit
holds every byte that was uploaded. LFS and Xet transfers are the Hub's storage path and are
not emulated. Any other request gets a 404 and is recorded, so a test can see it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/datasets/{REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/api/datasets/{REPO}/tree/(?P<rev>[^/]+)(?P<path>/.*)?$"), "tree"),
    ("POST", re.compile(rf"^/api/datasets/{REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/datasets/{REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
]


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Commit:
    repo: str
    revision: str
    summary: str
    files: dict[str, bytes]  # path -> content
    deleted: list[str]


@dataclass
class HubState:
    requests: list[Request] = field(default_factory=list)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # repo -> create payload
    branches: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def files(self, repo: str, revision: str) -> dict[str, bytes]:
        return self.branches.setdefault(repo, {}).setdefault(revision, {})


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=unquote(parts.path),
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._body() if self.command in ("POST", "PUT") else b"",
        )
        state = self.server.state
        with state.lock:
            state.requests.append(request)
        for method, pattern, name in ROUTES:
            match = pattern.match(request.path)
            if method == request.method and match:
                with state.lock:
                    status, payload = getattr(self, name)(request, **match.groupdict())
                self._reply(status, payload)
                return
        self._reply(404, {"error": f"not emulated: {request.method} {request.path}"})

    do_GET = do_POST = do_PUT = do_HEAD = _handle

    # --- endpoints --------------------------------------------------------------------------

    def create_repo(self, request: Request) -> tuple[int, Any]:
        payload = json.loads(request.body)
        repo = f"{payload['organization']}/{payload['name']}"
        state = self.server.state
        if repo in state.repos:
            return 409, {"error": "You already created this dataset repo"}
        state.repos[repo] = payload
        state.files(repo, "main")
        return 200, {"url": f"{self.server.base_url}/datasets/{repo}", "name": repo}

    def validate_yaml(self, request: Request) -> tuple[int, Any]:
        return 200, {"errors": [], "warnings": []}

    def create_branch(self, request: Request, repo: str, rev: str) -> tuple[int, Any]:
        branches = self.server.state.branches.setdefault(repo, {})
        if rev in branches:
            return 409, {"error": "Reference already exists"}
        branches[rev] = dict(branches.get("main", {}))
        return 200, {}

    def tree(self, request: Request, repo: str, rev: str, path: str | None) -> tuple[int, Any]:
        if repo not in self.server.state.repos:
            return 404, {"error": "Repository not found"}
        files = self.server.state.files(repo, unquote(rev))
        return 200, [
            {"type": "file", "path": name, "size": len(data), "oid": _git_oid(data)}
            for name, data in sorted(files.items())
        ]

    def preupload(self, request: Request, repo: str, rev: str) -> tuple[int, Any]:
        files = json.loads(request.body)["files"]
        return 200, {
            "files": [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ]
        }

    def commit(self, request: Request, repo: str, rev: str) -> tuple[int, Any]:
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        added: dict[str, bytes] = {}
        deleted: list[str] = []
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                deleted.append(value["path"])
            elif item["key"] != "header":
                return 400, {"error": f"this server does not take {item['key']} entries"}
        state = self.server.state
        revision = unquote(rev)
        files = state.files(repo, revision)
        for name in deleted:
            files.pop(name, None)
        files.update(added)
        state.commits.append(Commit(repo, revision, header["summary"], added, deleted))
        oid = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
        return 200, {
            "commitUrl": f"{self.server.base_url}/datasets/{repo}/commit/{oid}",
            "commitOid": oid,
            "pullRequestUrl": None,
        }


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = HubState()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class FakeHub:
    """`with FakeHub() as hub:` serves on 127.0.0.1 until the block ends; `hub.url` is the
    endpoint and `hub.state` what it recorded."""

    def __init__(self) -> None:
        self._server = _Server()
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return self._server.base_url

    @property
    def state(self) -> HubState:
        return self._server.state

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
