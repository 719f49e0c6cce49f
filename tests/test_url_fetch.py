"""serve_app.url_fetch without Ray: local HTTP(S) servers on 127.0.0.x (allowed via ``allow_networks``) and a
fake resolver (``socket.getaddrinfo``, which both asyncio and httpx's network backend resolve through).

Independent answers: embedded IPv4 addresses computed here from the RFC layouts (RFC 6052 NAT64, RFC 3056
6to4, RFC 4380 Teredo), which server socket a request reached, the bytes the server sent, and how many bytes
zlib was allowed to inflate.
"""

import asyncio
import datetime
import gzip
import io
import ipaddress
import os
import socket
import ssl
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from PIL import Image

from serve_app import url_fetch
from serve_app.url_fetch import UrlFetchError, fetch_image_url, refusal_reason

MB = 1024 * 1024


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


PNG = _png()


class _Host(BaseHTTPRequestHandler):
    """Routes come from ``server.routes``: path → ``(status, headers, body or a callable writing it)``."""

    def do_GET(self):  # noqa: N802
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})
        status, headers, body = self.server.routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if isinstance(body, bytes) and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        body(self.wfile) if callable(body) else self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(host: str, port: int = 0, routes=None, tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), _Host)
    server.routes, server.seen, server.daemon_threads = routes or {}, [], True
    server.handle_error = lambda request, address: None  # a client that hangs up early is expected here
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers():
    started: list[ThreadingHTTPServer] = []

    def start(host: str, port: int = 0, routes=None, tls=None) -> ThreadingHTTPServer:
        started.append(_serve(host, port, routes, tls))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def dns(monkeypatch):
    """``dns["name.test"] = [answer1, answer2, ...]``: the n-th lookup gets the n-th answer (the last repeats);
    ``dns.calls["name.test"]`` counts lookups. Other ``.test``/``.invalid`` names do not resolve."""
    real = socket.getaddrinfo

    class Fake(dict):
        calls: dict[str, int]

    fake = Fake()
    fake.calls = {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        host = host.decode() if isinstance(host, bytes) else host
        if host not in fake and not host.endswith((".test", ".invalid")):
            return real(host, port, family, type, proto, flags)
        n = fake.calls[host] = fake.calls.get(host, 0) + 1
        answers = fake.get(host)
        if not answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        addresses = answers[min(n, len(answers)) - 1]
        if addresses == "sleep":
            time.sleep(3)
            return []
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return fake


@pytest.fixture
def no_connect(monkeypatch):
    async def send(*args, **kwargs):
        raise AssertionError("a connection was attempted for a refused address")

    monkeypatch.setattr(httpx.AsyncClient, "send", send)


def fetch(url: str, max_bytes: int = MB, timeout_s: float = 5.0, allow=("127.0.0.2/32",)) -> bytes:
    return asyncio.run(fetch_image_url(url, max_bytes, timeout_s, list(allow)))


def refused(url: str, **kwargs) -> UrlFetchError:
    with pytest.raises(UrlFetchError) as info:
        fetch(url, **kwargs)
    return info.value


def _teredo(server: str, client: str, port: int = 40000) -> str:
    """RFC 4380 §4: 2001:0000 | server IPv4 | flags | port XOR 0xffff | client IPv4 XOR 0xffffffff."""
    value = (0x20010000 << 96) | (int(ipaddress.IPv4Address(server)) << 64) | (0x8000 << 48)
    value |= ((port ^ 0xFFFF) << 32) | (int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF)
    return str(ipaddress.IPv6Address(value))


def _embed(prefix: str, ipv4: str, shift: int = 0) -> str:
    """``ipv4`` written into ``prefix`` at bit offset ``shift`` from the right (RFC 6052 /96: 0; RFC 3056: 80)."""
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(prefix)) | int(ipaddress.IPv4Address(ipv4)) << shift))


# (literal address in the URL, address(es) the message must name)
FORBIDDEN = [
    ("168.63.129.16", ["168.63.129.16"]),  # Azure WireServer / metadata
    ("169.254.169.254", ["169.254.169.254"]),
    ("192.0.0.192", ["192.0.0.192"]),  # Oracle Cloud metadata, 192.0.0.0/24
    ("100.100.100.200", ["100.100.100.200"]),  # Alibaba metadata, RFC 6598 space
    ("192.88.99.1", ["192.88.99.1"]),
    ("0.0.0.0", ["0.0.0.0"]),
    ("255.255.255.255", ["255.255.255.255"]),
    ("224.0.0.1", ["224.0.0.1"]),
    ("2130706433", ["127.0.0.1"]),  # decimal form, resolved by getaddrinfo
    (_embed("64:ff9b::", "127.0.0.1"), ["127.0.0.1"]),  # NAT64 well-known prefix, RFC 6052
    (_embed("64:ff9b::", "10.1.2.3"), ["10.1.2.3"]),
    (_embed("64:ff9b:1::", "192.168.1.1"), ["192.168.1.1"]),  # local-use NAT64, RFC 8215
    (_embed("64:ff9b:1::", "8.8.8.8"), ["8.8.8.8"]),  # local-use: refused even for a public IPv4
    (_embed("::ffff:0:0", "127.0.0.1"), ["127.0.0.1"]),  # IPv4-mapped
    (_embed("::ffff:0:0", "169.254.169.254"), ["169.254.169.254"]),
    (_embed("::", "127.0.0.1"), ["127.0.0.1"]),  # IPv4-compatible, deprecated
    (_embed("2002::", "169.254.169.254", 80), ["169.254.169.254"]),  # 6to4, RFC 3056
    (_embed("2002::", "10.0.0.1", 80), ["10.0.0.1"]),
    (_embed("2002::", "8.8.8.8", 80), ["8.8.8.8"]),  # 6to4 is deprecated (RFC 7526): refused anyway
    (_teredo("65.54.227.120", "10.0.0.1"), ["10.0.0.1"]),  # Teredo client, RFC 4380
    (_teredo("127.0.0.1", "8.8.8.8"), ["127.0.0.1"]),  # Teredo server
    ("::1", ["::1"]), ("::", ["::"]), ("fe80::1", ["fe80::1"]), ("fd00:ec2::254", ["fd00:ec2::254"]),
    ("fec0::1", ["fec0::1"]), ("ff02::1", ["ff02::1"]), ("100::1", ["100::1"]), ("5f00::1", ["5f00::1"]),
    ("2001:db8::1", ["2001:db8::1"]), ("3fff::1", ["3fff::1"]), ("2001:2::1", ["2001:2::1"]),
]


@pytest.mark.parametrize("address,named", FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_forbidden_address_forms_are_refused_before_connecting(no_connect, address, named):
    host = f"[{address}]" if ":" in address else address
    error = refused(f"http://{host}:8080/x.png")
    assert (error.status, error.code) == (403, "image_url_forbidden")
    if not address.isdigit():  # the message names the address as ipaddress writes it, and what it embeds
        named = named + [str(ipaddress.ip_address(address))]
    for name in named:
        assert name in str(error), str(error)


def test_embedded_public_ipv4_passes_in_translated_forms():
    for address in ("8.8.8.8", "::ffff:8.8.8.8", _embed("64:ff9b::", "8.8.8.8"), "2606:4700:4700::1111"):
        assert refusal_reason(ipaddress.ip_address(address)) is None, address


def test_every_address_of_a_name_must_be_public(dns, no_connect):
    dns["mixed.test"] = [["93.184.216.34", "::ffff:127.0.0.1"]]
    error = refused("http://mixed.test/x.png")
    assert error.status == 403 and "'mixed.test'" in str(error) and "127.0.0.1" in str(error)


def test_unresolvable_and_bad_urls(dns, no_connect):
    assert refused("http://no-such-host.invalid/x.png").code == "image_url_unresolvable"
    for url in ("file:///etc/passwd", "ftp://example.com/x", "http:///x.png", "http://[::1/x"):
        assert refused(url).code == "invalid_image_url", url


def test_small_image_round_trips_byte_exact_with_identity_asked(servers):
    server = servers("127.0.0.2", routes={"/a.png": (200, {"Content-Type": "image/png"}, PNG)})
    assert fetch(f"http://127.0.0.2:{server.server_port}/a.png") == PNG
    headers = server.seen[0]["headers"]
    assert headers["Accept-Encoding"] == "identity"
    assert headers["Host"] == f"127.0.0.2:{server.server_port}"


def test_allow_networks_is_matched_against_the_connected_address(servers):
    server = servers("127.0.0.2", routes={"/a.png": (200, {}, PNG)})
    error = refused(f"http://127.0.0.2:{server.server_port}/a.png", allow=("127.0.0.3/32",))
    assert error.status == 403 and "127.0.0.2" in str(error) and server.seen == []


def _port_free_on(*hosts: str) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind((hosts[0], 0))
            port = s.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    pytest.skip(f"no port free on all of {hosts}")


def test_dns_rebinding_connects_only_to_the_checked_address(dns, servers):
    """First answer 127.0.0.3 (allowed: stands for a public address), every later one 127.0.0.1 (forbidden).
    A server on each, same port: the body tells which socket the request reached."""
    port = _port_free_on("127.0.0.3", "127.0.0.1")
    checked = servers("127.0.0.3", port, {"/a.png": (200, {}, b"checked"), "/again": (302, {"Location": "/a.png"}, b"")})
    rebound = servers("127.0.0.1", port, {"/a.png": (200, {}, b"rebound")})
    dns["rebind.test"] = [["127.0.0.3"], ["127.0.0.1"]]
    assert fetch(f"http://rebind.test:{port}/a.png", allow=("127.0.0.3/32",)) == b"checked"
    assert dns.calls["rebind.test"] == 1
    assert rebound.seen == [] and checked.seen[0]["headers"]["Host"] == f"rebind.test:{port}"

    # A redirect back to the same name is a new hop: resolved again (now 127.0.0.1), checked and refused.
    dns.calls.clear()
    error = refused(f"http://rebind.test:{port}/again", allow=("127.0.0.3/32",))
    assert error.status == 403 and "127.0.0.1" in str(error)
    assert dns.calls["rebind.test"] == 2 and rebound.seen == []


def test_redirects_are_checked_hop_by_hop(servers, dns):
    dns["inside.test"] = [["10.9.8.7"]]
    server = servers("127.0.0.2")
    base = f"http://127.0.0.2:{server.server_port}"
    server.routes.update({
        "/a.png": (200, {}, PNG),
        "/ok": (301, {"Location": "/a.png"}, b""),
        "/private": (302, {"Location": "http://10.0.0.1/x.png"}, b""),
        "/mapped": (307, {"Location": f"http://[::ffff:127.0.0.1]:{server.server_port}/a.png"}, b""),
        "/by-name": (302, {"Location": "http://inside.test/x.png"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
    })
    assert fetch(base + "/ok") == PNG
    for path, named in (("/private", "10.0.0.1"), ("/mapped", "127.0.0.1"), ("/by-name", "10.9.8.7")):
        error = refused(base + path)
        assert (error.status, error.code) == (403, "image_url_forbidden") and named in str(error), path
    error = refused(base + "/loop")
    assert error.status == 400 and f"more than {url_fetch.MAX_REDIRECTS}" in str(error)
    assert sum(s["path"] == "/loop" for s in server.seen) == url_fetch.MAX_REDIRECTS + 1


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """~1 MB of gzip (1 MB random + 99 MB zeros) that inflates to exactly 100 MB."""
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    parts = [packer.compress(os.urandom(MB))] + [packer.compress(bytes(MB)) for _ in range(99)]
    return b"".join(parts) + packer.flush()


def test_gzip_bomb_is_refused_without_inflating_it(servers, monkeypatch, gzip_bomb):
    assert 1 * MB < len(gzip_bomb) < 2 * MB and len(gzip.decompress(gzip_bomb)) == 100 * MB
    inflated = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args):
            self._z = real(*args)

        def decompress(self, data, max_length=0):
            out = self._z.decompress(data, max_length)
            inflated.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._z, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    server = servers("127.0.0.2", routes={"/bomb": (200, {"Content-Encoding": "gzip"}, gzip_bomb)})
    start = time.monotonic()
    error = refused(f"http://127.0.0.2:{server.server_port}/bomb", max_bytes=2 * MB)
    assert (error.status, error.code) == (413, "image_url_too_large")
    assert time.monotonic() - start < 5.0
    assert sum(inflated) <= 2 * MB + 1  # never more than the limit (+1 to detect it) in memory


def test_raw_bytes_count_and_encodings(servers):
    server = servers("127.0.0.2")
    base = f"http://127.0.0.2:{server.server_port}"
    raw_deflate = zlib.compressobj(9, zlib.DEFLATED, -15)

    def write_3mb(wfile):
        for _ in range(3):
            wfile.write(os.urandom(MB))
    server.routes.update({
        "/gz": (200, {"Content-Encoding": "gzip"}, gzip.compress(PNG)),
        "/zlib": (200, {"Content-Encoding": "deflate"}, zlib.compress(PNG)),
        "/raw-deflate": (200, {"Content-Encoding": "deflate"}, raw_deflate.compress(PNG) + raw_deflate.flush()),
        "/br": (200, {"Content-Encoding": "br"}, b"\x0b\x02\x80hello\x03"),
        "/truncated-gz": (200, {"Content-Encoding": "gzip"}, gzip.compress(PNG)[:-20]),
        "/undeclared": (200, {}, write_3mb),  # no Content-Length: the limit is counted while streaming
    })
    for path in ("/gz", "/zlib", "/raw-deflate"):
        assert fetch(base + path) == PNG, path
    error = refused(base + "/br")
    assert (error.status, error.code) == (400, "image_url_fetch_failed") and "'br'" in str(error)
    assert refused(base + "/truncated-gz").status == 400
    error = refused(base + "/undeclared", max_bytes=2 * MB)
    assert (error.status, error.code) == (413, "image_url_too_large") and "on the wire" in str(error)


def test_timeout_covers_the_whole_fetch(servers, dns):
    def trickle(wfile):
        for _ in range(40):
            wfile.write(b"x")
            wfile.flush()
            time.sleep(0.1)  # each read is quick; the whole body takes 4 s

    server = servers("127.0.0.2", routes={"/slow": (200, {"Content-Length": "40"}, trickle)})
    dns["slow-dns.test"] = ["sleep"]

    async def timed(url: str) -> tuple[UrlFetchError, float]:
        start = time.monotonic()
        with pytest.raises(UrlFetchError) as info:
            await fetch_image_url(url, MB, 0.5, ["127.0.0.2/32"])
        return info.value, time.monotonic() - start  # asyncio.run then waits for the sleeping resolver thread

    for url in (f"http://127.0.0.2:{server.server_port}/slow", "http://slow-dns.test/x.png"):
        error, elapsed = asyncio.run(timed(url))
        assert (error.status, error.code) == (408, "image_url_timeout"), url
        assert elapsed < 2.0, (url, elapsed)  # the body takes 4 s, the resolver 3 s


def _tls_pair(tmp_path, name: str) -> tuple[ssl.SSLContext, str]:
    """A server context with a certificate for ``name`` signed by a fresh CA; returns it and the CA's PEM path."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject, issuer, key, sign_key, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return builder.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test CA")])
    ca = certificate(ca_name, ca_name, ca_key, ca_key, True)
    leaf = certificate(x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, name)]), ca_name, key, ca_key, False)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "leaf.pem")
    return context, str(tmp_path / "ca.pem")


def test_https_is_pinned_with_sni_and_certificate_checked_on_the_name(tmp_path, servers, dns, monkeypatch):
    import certifi

    context, ca = _tls_pair(tmp_path, "images.test")
    sni: list[str | None] = []
    context.sni_callback = lambda sock, server_name, ctx: sni.append(server_name)
    monkeypatch.setattr(certifi, "where", lambda: ca)  # httpx's default context trusts certifi's bundle
    server = servers("127.0.0.2", routes={"/a.png": (200, {}, PNG)}, tls=context)
    dns["images.test"] = [["127.0.0.2"]]
    dns["other.test"] = [["127.0.0.2"]]
    assert fetch(f"https://images.test:{server.server_port}/a.png") == PNG
    assert sni == ["images.test"] and server.seen[0]["headers"]["Host"] == f"images.test:{server.server_port}"

    # Same address, a name the certificate does not cover: verification still fails.
    error = refused(f"https://other.test:{server.server_port}/a.png")
    assert (error.status, error.code) == (400, "image_url_fetch_failed") and "certificate" in str(error).lower()
