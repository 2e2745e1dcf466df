"""A git smart-HTTP server of the tests' own: ``git http-backend`` (the host's git) behind a
small threaded HTTPS server on loopback, which answers 401 unless the request carries
``Authorization: Basic x-access-token:<token>``. Keep-alive, as git expects; records the
authorization each request carried."""

from __future__ import annotations

import base64
import http.server
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

GIT = shutil.which("git")


@dataclass
class GitServer:
    """Serves the bare repositories under ``root`` at ``https://<name>:<port>/<repo>.git``."""

    __test__: ClassVar[bool] = False

    root: Path
    token: str = field(repr=False)
    tls: ssl.SSLContext
    authorizations: list[str] = field(default_factory=list)
    refused: int = 0
    port: int = 0
    _server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> GitServer:
        server_self = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                server_self._handle(self)

            def do_POST(self) -> None:
                server_self._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        body = _read_body(request)
        authorization = request.headers.get("Authorization", "")
        self.authorizations.append(authorization)
        expected = "Basic " + base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        if authorization != expected:
            self.refused += 1
            reply = b"token required\n"
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", str(len(reply)))
            request.end_headers()
            request.wfile.write(reply)
            return
        path, _, query = request.path.partition("?")
        assert GIT is not None
        env = {
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": request.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        if request.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = request.headers["Content-Encoding"]
        if request.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = request.headers["Git-Protocol"]
        result = subprocess.run(
            [GIT, "http-backend"], input=body, env=env, capture_output=True, timeout=60
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        status = 200
        headers: list[tuple[str, str]] = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split(" ")[0])
            elif name:
                headers.append((name, value.strip()))
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)


def _read_body(request: http.server.BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while request.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(request.rfile.read(size))
            request.rfile.readline()
    length = int(request.headers.get("Content-Length") or 0)
    return request.rfile.read(length) if length else b""


def make_repository(root: Path, name: str) -> Path:
    """A bare repository ``root/<name>.git`` with one commit (README), pushes allowed."""
    assert GIT is not None
    bare = root / f"{name}.git"
    seed = root / f"{name}-seed"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(root),
        "GIT_CONFIG_NOSYSTEM": "1",
    }

    def git(*args: str, cwd: Path = root) -> None:
        subprocess.run([GIT, *args], cwd=cwd, env=env, check=True, capture_output=True)

    git("init", "-q", "--bare", "-b", "main", str(bare))
    git("config", "http.receivepack", "true", cwd=bare)
    git("init", "-q", "-b", "main", str(seed))
    (seed / "README").write_text("seeded\n")
    git("add", "README", cwd=seed)
    git("-c", "user.name=t", "-c", "user.email=t@example", "commit", "-qm", "seed", cwd=seed)
    git("push", "-q", str(bare), "main", cwd=seed)
    shutil.rmtree(seed)
    return bare
