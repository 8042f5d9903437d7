"""Real object stores on 127.0.0.1 for tests: moto's standalone S3 server (speaks the S3 HTTP API, like
MinIO), the gcp-storage-emulator, and a proxy that drops connections mid-response."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cmd: list[str], port: int, probe: str, env: dict | None = None):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                requests.get(self.url + probe, timeout=1)
                return
            except requests.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {self.proc.returncode}") from None
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{cmd[0]} did not start on port {port}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def moto_s3(enforce_auth: bool = False) -> Server:
    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if enforce_auth else {}
    return Server([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, "/moto-api/", env)


def gcs_emulator() -> Server:
    port = free_port()
    return Server([str(BIN / "gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                   "--in-memory"], port, "/")


def _listening_socket() -> tuple[socket.socket, int, str]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    return sock, port, f"http://127.0.0.1:{port}"


class FlakyProxy:
    """TCP proxy to `upstream` that cuts the first `drops` connections after `cut_after` response bytes:
    a connection dropped mid-transfer, as a real network does."""

    def __init__(self, upstream_port: int, drops: int, cut_after: int = 200):
        self.upstream, self.drops, self.cut_after = upstream_port, drops, cut_after
        self.dropped = 0
        self.sock, self.port, self.url = _listening_socket()
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        cut = self.dropped < self.drops
        if cut:
            self.dropped += 1

        def pump(src, dst, limit):
            sent = 0
            try:
                while data := src.recv(65536):
                    if limit is not None and sent + len(data) > limit:
                        dst.sendall(data[: max(0, limit - sent)])
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    s.close()

        threading.Thread(target=pump, args=(client, upstream, None), daemon=True).start()
        pump(upstream, client, self.cut_after if cut else None)

    def stop(self) -> None:
        self._stop = True
        self.sock.close()


class OutageProxy:
    """TCP proxy to `upstream` that serves `requests` HTTP requests, then goes down for good: every open
    connection is cut and new ones are refused, as when a store's endpoint disappears mid-run."""

    def __init__(self, upstream_port: int, requests: int):
        self.upstream, self.budget = upstream_port, requests
        self.seen = 0
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.sock, self.port, self.url = _listening_socket()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.down.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _cut_everything(self) -> None:
        self.down.set()
        with self.lock:
            for s in [self.sock, *self.sockets]:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def _handle(self, client: socket.socket) -> None:
        if self.down.is_set():
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream))
        with self.lock:
            self.sockets += [client, upstream]

        def pump(src, dst, count_requests: bool):
            try:
                while data := src.recv(65536):
                    if count_requests:
                        with self.lock:
                            self.seen += data.count(b" HTTP/1.1\r\n")
                            over = self.seen > self.budget
                        if over:
                            self._cut_everything()
                            return
                    dst.sendall(data)
            except OSError:
                pass

        threading.Thread(target=pump, args=(client, upstream, True), daemon=True).start()
        pump(upstream, client, False)

    def stop(self) -> None:
        self._cut_everything()
