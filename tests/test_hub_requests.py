"""A Hub id read over the network: one request, never huggingface_hub's retries, and
nothing but ftmem's sentence on stderr (issue 19: bounded time, one line).

A local HTTP server on 127.0.0.1 stands in for the Hub (``HF_ENDPOINT``); nothing leaves
the machine. huggingface_hub 2.4.0 alone would retry a failing request five times with
backoff (1 + 2 + 4 + 8 + 8 s) and log every try.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from tests.test_sources import LLAMA_CFG

pytest.importorskip("huggingface_hub")

REPO = "someone/tiny-llama-upload"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
BODY = json.dumps(LLAMA_CFG).encode()


class _Hub(BaseHTTPRequestHandler):
    status = 200  # what every request is answered with (set per test)
    requests: ClassVar[list[str]] = []

    def _answer(self, with_body: bool) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        if type(self).status != 200 or not self.path.endswith(f"{REPO}/resolve/main/config.json"):
            self.send_response(type(self).status if type(self).status != 200 else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"a1b2c3"')
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        if with_body:
            self.wfile.write(BODY)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hub.requests = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _ftmem(endpoint: str, cache: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_CACHE": cache,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    code = "import sys; from ftmem.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_failing_hub_is_asked_once_and_said_in_one_line(hub, tmp_path):
    _Hub.status = 503  # huggingface_hub retries 5xx answers
    done = _ftmem(hub, str(tmp_path), "estimate", REPO, "--method", "lora")
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "could not be read from the Hub" in lines[0]
    assert len(_Hub.requests) == 1, _Hub.requests  # one HEAD, no retry


def test_a_config_from_the_hub_is_downloaded_then_read_from_the_cache(hub, tmp_path):
    _Hub.status = 200
    first = _ftmem(hub, str(tmp_path), "estimate", REPO, "--method", "lora", "--format", "json")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    asked = list(_Hub.requests)
    assert asked and all(r.endswith("/config.json") for r in asked)  # never weights
    cached = tmp_path / "models--someone--tiny-llama-upload" / "snapshots" / COMMIT
    assert json.loads((cached / "config.json").read_text()) == LLAMA_CFG

    second = _ftmem(hub, str(tmp_path), "estimate", REPO, "--method", "lora", "--format", "json")
    assert second.returncode == 0, second.stderr
    assert _Hub.requests == asked  # the cached copy: no new request
    assert json.loads(second.stdout) == json.loads(first.stdout)
