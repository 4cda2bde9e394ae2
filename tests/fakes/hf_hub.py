"""A small Hugging Face Hub on loopback, for tests: the endpoints ``huggingface_hub`` calls to
create a dataset repo, upload files in a commit and download them, speaking the real wire protocol
so the real client (pointed at it with ``HF_ENDPOINT`` / ``endpoint=``) is tested exactly as
against huggingface.co.

What it implements, read from huggingface_hub's source (``hf_api.py``, ``_commit_api.py``,
``lfs.py``, ``file_download.py``, ``utils/_http.py``):

* ``POST /api/repos/create``: ``{name, organization, type, visibility}`` → ``{url}``; 409 when the
  repo exists (the client swallows it only with ``exist_ok``).
* ``GET /api/datasets/{repo}[/revision/{rev}]``: repo info with ``sha`` and ``siblings``.
* ``POST /api/datasets/{repo}/branch/{branch}``: a branch from ``main`` (409 when it exists).
* ``POST /api/validate-yaml``: the README's front matter must be YAML mapping.
* ``POST /api/datasets/{repo}/preupload/{rev}``: ``uploadMode`` per file, as the Hub decides it:
  ``lfs`` for paths the repo's ``.gitattributes`` sends to LFS (``*.parquet``, as on a new Hub
  dataset repo), binary samples (a NUL byte) and files over 10 MB; ``regular`` otherwise.
* ``POST /datasets/{repo}.git/info/lfs/objects/batch``, then ``PUT`` of each object to the
  ``href`` it answered and ``POST`` to its ``verify`` href (the Git LFS basic transfer; the client
  uses it when Xet is off, ``HF_HUB_DISABLE_XET=1``: this fake does not speak Xet).
* ``POST /api/datasets/{repo}/commit/{rev}``: the NDJSON body (``header``, ``file`` with base64
  content, ``lfsFile`` naming an uploaded object, ``deletedFile``); a binary regular file is
  refused as the Hub refuses it, an ``lfsFile`` whose object was not uploaded (or has another
  size) is refused.
* ``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}``: regular files answered directly with
  ``X-Repo-Commit``, ``ETag`` (the git blob sha1) and ``Content-Length``; LFS files redirected
  (302) to a second server standing in for the CDN, with ``X-Linked-Etag`` (the sha256),
  ``X-Linked-Size`` and ``X-Repo-Commit``, as the Hub does.

Errors carry the Hub's ``X-Error-Code`` / ``X-Error-Message`` headers: 401 for a token it does not
know ("Invalid credentials in Authorization header"), 404 ``RepoNotFound`` for a repo that does not
exist or that the caller may not see (a private repo of someone else), ``RevisionNotFound``,
``EntryNotFound``, 403 for writes outside the caller's namespaces.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

LFS_PATTERNS = ("*.parquet", "*.arrow", "*.bin", "*.gz", "*.zst", "*.pt", "*.safetensors")
"""What a new dataset repo's ``.gitattributes`` sends to LFS on the Hub (a subset)."""
REGULAR_MAX_BYTES = 10 * 1024 * 1024


def git_hash(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """What preupload answers as the remote oid (the client compares it with its own)."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_hash(self.data)


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, Blob]


@dataclass
class Repo:
    repo_id: str
    owner: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit | None:
        sha = self.refs.get(rev, rev)
        return self.commits.get(sha)


class FakeHub:
    """The fake Hub. ``tokens`` maps a token to its user and the namespaces it may write to.
    ``requests`` records ``(method, path)`` of every request; ``bodies`` every request body
    (to check a secret never travels where it should not)."""

    def __init__(self, tokens: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> None:
        self.tokens = tokens if tokens is not None else {"hf_test_token": ("alice", ("alice", "org"))}
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.commit_payloads: list[list[dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(cdn=False))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler(cdn=True))
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{self._cdn.server_address[1]}"
        self._threads = [
            threading.Thread(target=s.serve_forever, daemon=True) for s in (self._server, self._cdn)
        ]

    def __enter__(self) -> FakeHub:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        for s in (self._server, self._cdn):
            s.shutdown()
            s.server_close()

    # --- state helpers for tests ------------------------------------------------------------

    def add_repo(
        self, repo_id: str, files: dict[str, bytes], *, owner: str = "alice", private: bool = False
    ) -> str:
        """A dataset repo with one commit of ``files`` on ``main`` (LFS as the Hub would decide);
        returns the commit sha."""
        repo = self.repos[repo_id] = Repo(repo_id, owner, private)
        blobs: dict[str, Blob | None] = {p: Blob(d, _is_lfs(p, d)) for p, d in files.items()}
        self.lfs.update({b.oid: b.data for b in blobs.values() if b is not None and b.lfs})
        self._commit(repo, "main", "initial commit", None, blobs)
        return repo.refs["main"]

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(rev)
        assert commit is not None
        return {p: b.data for p, b in commit.files.items()}

    def lfs_paths(self, repo_id: str, rev: str = "main") -> set[str]:
        commit = self.repos[repo_id].resolve(rev)
        assert commit is not None
        return {p for p, b in commit.files.items() if b.lfs}

    def _commit(
        self, repo: Repo, branch: str, message: str, parent: str | None, changes: dict[str, Blob | None]
    ) -> Commit:
        base = dict(repo.commits[parent].files) if parent else {}
        for path, blob in changes.items():
            if blob is None:
                base.pop(path, None)
            else:
                base[path] = blob
        h = hashlib.sha1(f"{parent}\x00{message}\x00{len(repo.commits)}".encode())
        for path in sorted(base):
            h.update(f"{path}\x00{base[path].oid}\n".encode())
        commit = Commit(h.hexdigest(), parent, message, base)
        repo.commits[commit.sha] = commit
        repo.refs[branch] = commit.sha
        return commit

    # --- the HTTP side ------------------------------------------------------------------------

    def _handler(self, cdn: bool) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            # replies

            def _send(
                self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False
            ) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                self._send(
                    status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}
                )

            def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
                headers = {"Content-Type": "application/json", "X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, json.dumps({"error": message}).encode(), headers, head=head)

            def _body(self) -> bytes:
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            # who is asking

            def _user(self) -> tuple[bool, tuple[str, tuple[str, ...]] | None]:
                """(ok, user): not ok when a token was sent that the Hub does not know."""
                auth = self.headers.get("Authorization")
                if not auth:
                    return True, None
                token = auth.removeprefix("Bearer ").strip()
                user = fake.tokens.get(token)
                return user is not None, user

            def _authenticated(self, head: bool = False) -> tuple[str, tuple[str, ...]] | bool | None:
                ok, user = self._user()
                if not ok:
                    self._error(401, "Invalid credentials in Authorization header", head=head)
                    return False
                return user

            def _visible(self, repo_id: str, user: Any, head: bool = False) -> Repo | None:
                repo = fake.repos.get(repo_id)
                if repo is None or (repo.private and (user is None or repo.owner != user[0])):
                    self._error(404, "Repository not found", "RepoNotFound", head=head)
                    return None
                return repo

            def _writable(self, repo_id: str, user: Any) -> Repo | None:
                if user is None:
                    self._error(401, "You must be authenticated to write to a repo")
                    return None
                repo = self._visible(repo_id, user)
                if repo is not None and repo_id.split("/")[0] not in user[1]:
                    self._error(403, "You don't have the rights to write to this repo")
                    return None
                return repo

            # dispatch

            def do_HEAD(self) -> None:
                self._route("HEAD")

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                query = parse_qs(url.query)
                with fake._lock:
                    fake.requests.append((method, self.path))
                if cdn:
                    return self._cdn_get(method, path)
                body = self._body() if method in ("POST", "PUT") else b""
                parts = path.strip("/").split("/")
                if method == "POST" and path == "/api/repos/create":
                    return self._create(json.loads(body))
                if method == "POST" and path == "/api/validate-yaml":
                    return self._validate_yaml(json.loads(body))
                if (
                    method == "POST"
                    and path.endswith(".git/info/lfs/objects/batch")
                    and parts[0] == "datasets"
                ):
                    return self._lfs_batch("/".join(parts[1:3]).removesuffix(".git"), json.loads(body))
                if method == "PUT" and parts[0] == "lfs-upload":
                    return self._lfs_put(parts[1], body)
                if method == "POST" and parts[0] == "lfs-verify":
                    return self._lfs_verify(json.loads(body))
                if parts[:2] == ["api", "datasets"] and len(parts) >= 4:
                    repo_id = "/".join(parts[2:4])
                    rest = parts[4:]
                    if method == "GET" and not rest:
                        return self._info(repo_id, "main", query)
                    if method == "GET" and rest[0] == "revision" and len(rest) >= 2:
                        return self._info(repo_id, "/".join(rest[1:]), query)
                    if method == "POST" and rest[0] == "preupload" and len(rest) >= 2:
                        return self._preupload(repo_id, "/".join(rest[1:]), json.loads(body))
                    if method == "POST" and rest[0] == "commit" and len(rest) >= 2:
                        return self._commit_ndjson(repo_id, "/".join(rest[1:]), body)
                    if method == "POST" and rest[0] == "branch" and len(rest) >= 2:
                        return self._branch(repo_id, "/".join(rest[1:]), json.loads(body or b"{}"))
                if (
                    method in ("GET", "HEAD")
                    and parts[0] == "datasets"
                    and len(parts) >= 6
                    and parts[3] == "resolve"
                ):
                    return self._resolve(method, "/".join(parts[1:3]), parts[4], "/".join(parts[5:]))
                self._error(404, f"no route {method} {path}")

            # endpoints

            def _create(self, payload: dict[str, Any]) -> None:
                user = self._authenticated()
                if user is False:
                    return
                if user is None:
                    return self._error(401, "You must be authenticated to create a repo")
                assert isinstance(user, tuple)
                if payload.get("type") != "dataset":
                    return self._error(400, "this fake Hub serves dataset repos only")
                namespace = payload.get("organization") or user[0]
                if namespace not in user[1]:
                    return self._error(
                        403,
                        f"You don't have the rights to create a dataset under the namespace {namespace!r}",
                    )
                repo_id = f"{namespace}/{payload['name']}"
                url = f"{fake.endpoint}/datasets/{repo_id}"
                with fake._lock:
                    if repo_id in fake.repos:
                        return self._json(
                            409,
                            {"error": "You already created this dataset repo", "url": url},
                            {"X-Error-Message": "You already created this dataset repo"},
                        )
                    repo = fake.repos[repo_id] = Repo(
                        repo_id, user[0], payload.get("visibility") == "private"
                    )
                    attrs = "".join(
                        f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS
                    ).encode()
                    fake._commit(repo, "main", "initial commit", None, {".gitattributes": Blob(attrs, False)})
                self._json(200, {"url": url, "name": repo_id, "id": repo_id})

            def _validate_yaml(self, payload: dict[str, Any]) -> None:
                content = payload.get("content", "")
                errors = []
                if content.startswith("---\n"):
                    head, sep, _ = content[4:].partition("\n---\n")
                    try:
                        meta = yaml.safe_load(head) if sep else None
                        if not isinstance(meta, dict):
                            errors.append({"message": "the YAML front matter is not a mapping"})
                    except yaml.YAMLError as exc:
                        errors.append({"message": f"invalid YAML: {exc}"})
                if errors:
                    return self._json(400, {"errors": errors, "warnings": []})
                self._json(200, {"errors": [], "warnings": []})

            def _info(self, repo_id: str, rev: str, query: dict[str, list[str]]) -> None:
                user = self._authenticated()
                if user is False:
                    return
                repo = self._visible(repo_id, user)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                blobs = query.get("blobs", ["false"])[0].lower() == "true"
                siblings = []
                for path, blob in sorted(commit.files.items()):
                    s: dict[str, Any] = {"rfilename": path}
                    if blobs:
                        s.update(size=len(blob.data), blobId=git_hash(blob.data))
                        if blob.lfs:
                            s["lfs"] = {"size": len(blob.data), "sha256": blob.oid, "pointerSize": 134}
                    siblings.append(s)
                self._json(
                    200,
                    {
                        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                        "id": repo_id,
                        "author": repo_id.split("/")[0],
                        "sha": commit.sha,
                        "private": repo.private,
                        "gated": False,
                        "disabled": False,
                        "tags": [],
                        "downloads": 0,
                        "likes": 0,
                        "siblings": siblings,
                        "lastModified": "2026-01-01T00:00:00.000Z",
                        "createdAt": "2026-01-01T00:00:00.000Z",
                    },
                )

            def _branch(self, repo_id: str, branch: str, payload: dict[str, Any]) -> None:
                user = self._authenticated()
                if user is False:
                    return
                repo = self._writable(repo_id, user)
                if repo is None:
                    return
                if branch in repo.refs:
                    return self._error(409, f"Reference already exists: refs/heads/{branch}")
                start = repo.resolve(payload.get("startingPoint") or "main")
                if start is None:
                    return self._error(404, "Invalid starting point", "RevisionNotFound")
                repo.refs[branch] = start.sha
                self._json(200, {})

            def _preupload(self, repo_id: str, rev: str, payload: dict[str, Any]) -> None:
                user = self._authenticated()
                if user is False:
                    return
                repo = self._writable(repo_id, user)
                if repo is None:
                    return
                commit = repo.resolve(rev)
                if commit is None:
                    return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                out = []
                for f in payload["files"]:
                    sample = base64.b64decode(f["sample"])
                    lfs = _is_lfs(f["path"], sample, f["size"])
                    existing = commit.files.get(f["path"])
                    entry: dict[str, Any] = {
                        "path": f["path"],
                        "uploadMode": "lfs" if lfs else "regular",
                        "shouldIgnore": False,
                    }
                    if existing is not None:
                        entry["oid"] = existing.oid
                    out.append(entry)
                self._json(200, {"files": out, "commitOid": commit.sha})

            def _lfs_batch(self, repo_id: str, payload: dict[str, Any]) -> None:
                user = self._authenticated()
                if user is False:
                    return
                if self._writable(repo_id, user) is None:
                    return
                if payload.get("operation") != "upload" or payload.get("hash_algo") != "sha256":
                    return self._error(400, "expected an sha256 upload batch")
                objects = []
                for o in payload["objects"]:
                    entry: dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
                    if fake.lfs.get(o["oid"]) is None:
                        entry["actions"] = {
                            "upload": {"href": f"{fake.endpoint}/lfs-upload/{o['oid']}"},
                            "verify": {"href": f"{fake.endpoint}/lfs-verify/{repo_id}"},
                        }
                    objects.append(entry)
                self._json(
                    200,
                    {"transfer": "basic", "objects": objects},
                    {"Content-Type": "application/vnd.git-lfs+json"},
                )

            def _lfs_put(self, oid: str, body: bytes) -> None:
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._error(400, "the uploaded object does not match its oid")
                with fake._lock:
                    fake.lfs[oid] = body
                self._send(200, b"")

            def _lfs_verify(self, payload: dict[str, Any]) -> None:
                data = fake.lfs.get(payload.get("oid", ""))
                if data is None or len(data) != payload.get("size"):
                    return self._error(404, "object not uploaded")
                self._json(200, {})

            def _commit_ndjson(self, repo_id: str, rev: str, body: bytes) -> None:
                user = self._authenticated()
                if user is False:
                    return
                repo = self._writable(repo_id, user)
                if repo is None:
                    return
                if self.headers.get("Content-Type") != "application/x-ndjson":
                    return self._error(400, "the commit body must be NDJSON")
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                if not lines or lines[0].get("key") != "header":
                    return self._error(400, "the first line of a commit must be its header")
                header = lines[0]["value"]
                if not header.get("summary"):
                    return self._error(400, "a commit needs a summary")
                with fake._lock:
                    head = repo.refs.get(rev)
                    if head is None:
                        return self._error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                    parent = header.get("parentCommit")
                    if parent is not None and parent != head:
                        return self._error(409, "A commit has happened since. Please refresh and try again.")
                    changes: dict[str, Blob | None] = {}
                    for line in lines[1:]:
                        value = line["value"]
                        if line["key"] == "file":
                            data = base64.b64decode(value["content"])
                            if _is_lfs(value["path"], data[:512], len(data)):
                                return self._error(
                                    400,
                                    f"Your push was rejected because it contains binary files: {value['path']}. Please use LFS",
                                )
                            changes[value["path"]] = Blob(data, False)
                        elif line["key"] == "lfsFile":
                            data = fake.lfs.get(value["oid"])
                            if data is None or len(data) != value["size"]:
                                return self._error(400, f"LFS object of {value['path']} was not uploaded")
                            changes[value["path"]] = Blob(data, True)
                        elif line["key"] == "deletedFile":
                            changes[value["path"]] = None
                        else:
                            return self._error(400, f"unknown commit line {line['key']!r}")
                    fake.commit_payloads.append(lines)
                    commit = fake._commit(repo, rev, header["summary"], head, changes)
                self._json(
                    200,
                    {
                        "commitUrl": f"{fake.endpoint}/datasets/{repo_id}/commit/{commit.sha}",
                        "commitOid": commit.sha,
                        "pullRequestUrl": None,
                    },
                )

            def _resolve(self, method: str, repo_id: str, rev: str, path: str) -> None:
                head = method == "HEAD"
                user = self._authenticated(head=head)
                if user is False:
                    return
                repo = self._visible(repo_id, user, head=head)
                if repo is None:
                    return
                commit = repo.resolve(unquote(rev))
                if commit is None:
                    return self._error(404, "Revision not found", "RevisionNotFound", head=head)
                blob = commit.files.get(path)
                if blob is None:
                    return self._send(
                        404,
                        b"",
                        {
                            "X-Error-Code": "EntryNotFound",
                            "X-Error-Message": "Entry not found",
                            "X-Repo-Commit": commit.sha,
                        },
                        head=head,
                    )
                if blob.lfs:
                    headers = {
                        "Location": f"{fake.cdn}/lfs-files/{blob.oid}",
                        "X-Linked-Etag": f'"{blob.oid}"',
                        "X-Linked-Size": str(len(blob.data)),
                        "X-Repo-Commit": commit.sha,
                        "ETag": f'"{git_hash(blob.data)}"',
                    }
                    return self._send(302, b"", headers, head=head)
                headers = {
                    "X-Repo-Commit": commit.sha,
                    "ETag": f'"{git_hash(blob.data)}"',
                    "Content-Type": "application/octet-stream",
                }
                self._send(200, blob.data, headers, head=head)

            def _cdn_get(self, method: str, path: str) -> None:
                parts = path.strip("/").split("/")
                data = fake.lfs.get(parts[-1]) if parts[0] == "lfs-files" else None
                if data is None:
                    return self._send(404, b"", head=method == "HEAD")
                self._send(
                    200,
                    data,
                    {"ETag": f'"{parts[-1]}"', "Content-Type": "application/octet-stream"},
                    head=method == "HEAD",
                )

        return Handler


def _is_lfs(path: str, sample: bytes, size: int | None = None) -> bool:
    if any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS):
        return True
    return b"\x00" in sample[:512] or (size if size is not None else len(sample)) > REGULAR_MAX_BYTES
