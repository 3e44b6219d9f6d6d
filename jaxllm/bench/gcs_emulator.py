"""A local Google Cloud Storage for tests and `python -m jaxllm.bench storage`: the gcp-storage-emulator (PyPI, the
dev extra) in its own process on 127.0.0.1, behind a proxy of ours that injects transient failures on a plan.

Clients reach the proxy through `client_env` (gcsfs, which etils.epath uses for gs://, and TensorStore's GCS
driver, which Orbax writes arrays with). A fault hits every `every`-th request of a kind (upload, download, list,
metadata, delete), at most `limit` times: a 503 or a 429 answered without passing the request on, or the
connection closed before any answer. A retry is a new request, so it passes; the proxy counts the faults it
injected and the requests that repeated one that failed (the clients' retries; a lower bound: a retry that
changes its request, as a resumed upload does, is not recognised). Not a GCS conformance test: the
emulator covers what gcsfs and TensorStore ask of it here, and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

HOST = "127.0.0.1"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def client_env(endpoint: str) -> dict[str, str]:
    """The environment that points gcsfs and TensorStore at endpoint (http://host:port), anonymously."""
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs asks a gRPC service whether a bucket is zonal first; the emulator speaks only the JSON API
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }


def kind(method: str, path: str) -> str:
    """What a GCS JSON API request does: upload, download, list, metadata or delete."""
    parsed = urllib.parse.urlsplit(path)
    query = urllib.parse.parse_qs(parsed.query)
    if parsed.path.startswith("/upload/") or method in ("PUT", "POST"):
        return "upload"
    if method == "DELETE":
        return "delete"
    if query.get("alt") == ["media"] or not parsed.path.startswith(("/storage/", "/b/")):
        return "download"
    return "list" if parsed.path.rstrip("/").endswith("/o") else "metadata"


@dataclasses.dataclass
class Fault:
    kind: str  # upload, download, list, metadata, delete
    every: int  # the every-th request of that kind fails (>= 2, so that the retry passes)
    action: str  # '503', '429' or 'drop'
    limit: int  # at most this many times
    injected: int = 0


class Emulator:
    """gcp-storage-emulator in its own process (in memory, one bucket), on a free port of 127.0.0.1."""

    def __init__(self, bucket: str):
        self.bucket, self.port = bucket, free_port()
        self.endpoint = f"http://{HOST}:{self.port}"
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", f"--host={HOST}", f"--port={self.port}"]
        command += [f"--default-bucket={bucket}", "--in-memory", "--quiet"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    error = self.process.stderr.read().decode()[-500:] if self.process.poll() is not None else ""
                    self.stop()
                    raise RuntimeError(f"the GCS emulator did not start on port {self.port}: {error}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class FaultProxy:
    """A proxy on a free port of 127.0.0.1 in front of `upstream` (http://host:port), failing requests on a plan
    (`faults`, changeable while it runs; empty: it passes everything)."""

    def __init__(self, upstream: str):
        self.upstream = urllib.parse.urlsplit(upstream).netloc
        self.faults: list[Fault] = []
        self.seen: collections.Counter = collections.Counter()  # requests by kind
        self.failed: set[tuple[str, str]] = set()  # (method, path) of requests a fault hit, not yet retried
        self.retries = 0  # requests that repeated one a fault hit
        self.lock = threading.Lock()
        self.server = _Server((HOST, 0), _handler(self))
        self.endpoint = f"http://{HOST}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arm(self, faults: list[Fault]) -> None:
        with self.lock:
            self.faults, self.retries = faults, 0
            self.seen.clear()
            self.failed.clear()

    def injected(self) -> dict[str, int]:
        """Faults injected so far, by '<kind> <action>'."""
        return {f"{f.kind} {f.action}": f.injected for f in self.faults}

    def decide(self, method: str, path: str) -> str | None:
        """The fault this request gets (an action), or None to pass it on; counts it."""
        k = kind(method, path)
        with self.lock:
            self.seen[k] += 1
            if (method, path) in self.failed:  # the first repeat of a failed request is its retry
                self.failed.discard((method, path))
                self.retries += 1
            for f in self.faults:
                if f.kind == k and self.seen[k] % f.every == 0 and f.injected < f.limit:
                    f.injected += 1
                    self.failed.add((method, path))
                    return f.action
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Quiet about clients that closed their connection (their retry is theirs to make); loud otherwise."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler(proxy: FaultProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the counts tell what happened
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _relay(self) -> None:
            body = self._body()
            action = proxy.decide(self.command, self.path)
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if action is not None:
                message = b'{"error": {"code": %s, "message": "injected by the test proxy"}}' % action.encode()
                self.send_response(int(action))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
            try:
                upstream.request(self.command, self.path, body=body, headers=headers)
                reply = upstream.getresponse()
                data = reply.read()
            finally:
                upstream.close()
            self.send_response(reply.status, reply.reason)
            for k, v in reply.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _relay

    return Handler


def environ_with(endpoint: str) -> dict[str, str]:
    """This process's environment with the clients pointed at endpoint (for a `python -m jaxllm...` child)."""
    return {**os.environ, **client_env(endpoint)}
