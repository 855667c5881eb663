"""A hub that says whatever a test wants, on loopback: a stdlib http.server speaking Hugging Face's listing and
resolve URLs, with TLS from a throwaway CA (made by the openssl CLI), and a record of every request.

    ca = make_ca(tmp_path, ["localhost", "IP:127.0.0.1"])
    with HostileHub(files={"w.bin": b"..."}, tls=ca) as hub:       # hub.url is https://127.0.0.1:PORT
        hub.listing = {...}                                         # replace the listing it answers
        hub.routes["/x"] = (302, {"Location": "http://..."}, b"")  # any path: (status, headers, body)
        hub.requests                                                # [(method, path, Authorization or None, tls)]

With tls=..., the same port also answers plain http (the first byte tells), so a redirect from https to http
on the same host and port, the downgrade an attacker on the path would use, can be tested.
"""
from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "a" * 40


def make_ca(folder: Path, names: list[str]) -> dict:
    """A CA and a server certificate for names ('localhost', 'IP:127.0.0.1'); returns the PEM paths."""
    folder.mkdir(parents=True, exist_ok=True)
    san = ",".join(n if n.startswith("IP:") else "DNS:" + n for n in names)

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=test server",
            "-keyout", "server.key", "-out", "server.csr")
    (folder / "server.ext").write_text("subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
                                       "extendedKeyUsage=serverAuth\n" % san)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
            "-extfile", "server.ext", "-out", "server.pem")
    return {"ca": str(folder / "ca.pem"), "cert": str(folder / "server.pem"), "key": str(folder / "server.key")}


def hf_listing(files: dict, commit: str = COMMIT) -> dict:
    """A well-formed Hugging Face revision listing of {path: bytes}, every file as LFS (size + sha256)."""
    return {"sha": commit, "siblings": [{"rfilename": path, "size": len(data),
                                         "lfs": {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}}
                                        for path, data in files.items()]}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HostileHub

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._answer(head=True)

    def do_GET(self):
        self._answer(head=False)

    def _answer(self, head: bool):
        hub = self.hub
        path = self.path.split("?", 1)[0]
        hub.requests.append((self.command, self.path, self.headers.get("Authorization"),
                             isinstance(self.connection, ssl.SSLSocket)))
        route = hub.routes.get(path)
        if route is not None:
            status, headers, body = route(self) if callable(route) else route
            return self._send(status, headers, body, head)
        if path.startswith("/api/models/"):
            return self._send(200, {"Content-Type": "application/json"}, json.dumps(hub.listing).encode(), head)
        marker = "/resolve/"
        if marker in path:
            name = path.split(marker, 1)[1].split("/", 1)[1]
            from urllib.parse import unquote
            data = hub.files.get(unquote(name))
            if data is None:
                return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"", head)
            rng = self.headers.get("Range")
            if rng:
                first, last = rng.split("=", 1)[1].split("-")
                start, end = int(first), min(int(last or len(data) - 1), len(data) - 1)
                return self._send(206, {"Content-Range": "bytes %d-%d/%d" % (start, end, len(data))},
                                  data[start:end + 1], head)
            return self._send(200, {}, data, head)
        self._send(404, {}, b"", head)

    def _send(self, status, headers, body, head):
        self.send_response(status)
        stream = not isinstance(body, (bytes, bytearray))
        for name, value in headers.items():
            self.send_header(name, value)
        if stream:
            self.send_header("Connection", "close")  # a body of unstated length ends when the connection does
        elif "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if head:
            return
        try:
            if stream:
                for block in body:
                    self.wfile.write(block)
                    self.hub.streamed += len(block)
                self.close_connection = True
            else:
                self.wfile.write(body)
        except OSError:
            self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: HostileHub):
        self.hub_ref = hub
        handler = type("Handler", (_Handler,), {"hub": hub})
        super().__init__(("127.0.0.1", 0), handler)

    def get_request(self):
        sock, addr = super().get_request()
        context = self.hub_ref.context
        if context is not None:
            sock.settimeout(10)
            try:
                first = sock.recv(1, socket.MSG_PEEK)
            except OSError:
                first = b""
            if first == b"\x16":  # a TLS ClientHello; anything else is plain http on the same port
                try:
                    sock = context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError):
                    sock.close()
                    raise OSError("TLS handshake refused") from None
        return sock, addr


class HostileHub:
    def __init__(self, files: dict | None = None, listing: dict | None = None, tls: dict | None = None):
        self.files = dict(files or {})
        self.listing = listing if listing is not None else hf_listing(self.files)
        self.routes: dict = {}
        self.requests: list = []
        self.streamed = 0
        self.context = None
        if tls:
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(tls["cert"], tls["key"])
        self.server = _Server(self)
        self.port = self.server.server_address[1]
        self.url = "%s://127.0.0.1:%d" % ("https" if tls else "http", self.port)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def auth_seen(self) -> set:
        return {auth for *_unused, auth, _tls in self.requests}

    def __enter__(self) -> HostileHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
