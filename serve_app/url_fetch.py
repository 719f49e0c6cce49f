"""Fetch a shopper-supplied ``image_url`` safely (no Ray import).

Rules (OWASP "Server-Side Request Forgery Prevention Cheat Sheet"):

- only ``http``/``https``; the URL is parsed once (by httpx) and that parse is both checked and fetched;
- the host must resolve, and every address it resolves to must be public: the IANA IPv4 and IPv6
  Special-Purpose Address Registries' blocks that are not globally reachable (loopback, private RFC 1918 /
  RFC 4193, shared RFC 6598, link-local incl. the cloud metadata address 169.254.169.254, documentation,
  benchmarking, multicast, reserved, unspecified), the Azure WireServer 168.63.129.16, and IPv6 outside
  global unicast ``2000::/3`` are refused. IPv6 forms that carry an IPv4 address are judged by that address:
  IPv4-mapped ``::ffff:a.b.c.d`` and NAT64 ``64:ff9b::/96`` (RFC 6052) pass when it is public; local-use NAT64
  ``64:ff9b:1::/48`` (RFC 8215), 6to4 ``2002::/16`` (RFC 3056, deprecated by RFC 7526), Teredo ``2001::/32``
  (RFC 4380) and IPv4-compatible ``::a.b.c.d`` (RFC 4291) are always refused, naming the embedded address;
- no DNS rebinding window: each hop is resolved once, and the request goes to an address that was checked
  (the URL's host is replaced by it; ``Host`` and, for https, SNI and certificate verification keep the
  original name). Redirects are followed by hand (at most ``MAX_REDIRECTS``), each hop resolved, checked and
  pinned the same way, each on a fresh connection pool;
- the body is bounded on the wire and after decoding: ``Accept-Encoding: identity`` is sent, raw bytes are
  counted against ``max_bytes``, and a ``gzip``/``deflate`` body the server sends anyway is inflated
  incrementally, never past ``max_bytes`` (a decompression bomb is a 413); other encodings are refused;
- the whole fetch (resolution, every hop, the body) is bounded in time.

Operators can allow specific networks (``allow_networks``, CIDR strings) for in-cluster image hosts; they are
matched against the address actually connected to.
"""

import asyncio
import ipaddress
import socket
import zlib
from collections.abc import Sequence
from urllib.parse import urljoin

import httpx

from serve_app.storage import ObjectTooLarge

MAX_REDIRECTS = 3

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _table(*rows: tuple[str, str]) -> tuple[tuple[ipaddress._BaseNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), label) for cidr, label in rows)


# First match wins. IANA IPv4 Special-Purpose Address Registry ("Globally Reachable: False") plus what
# `ipaddress.is_global` lets through on some Python versions (192.88.99.0/24, 168.63.129.16).
_IPV4_REFUSED = _table(
    ("0.0.0.0/8", "'this network' (RFC 791)"), ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (RFC 6598)"), ("127.0.0.0/8", "loopback (RFC 1122)"),
    ("169.254.0.0/16", "link-local / cloud metadata (RFC 3927)"), ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments (RFC 6890)"), ("192.0.2.0/24", "documentation (RFC 5737)"),
    ("192.88.99.0/24", "6to4 relay anycast (RFC 7526)"), ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"), ("198.51.100.0/24", "documentation (RFC 5737)"),
    ("203.0.113.0/24", "documentation (RFC 5737)"), ("224.0.0.0/4", "multicast (RFC 5771)"),
    ("240.0.0.0/4", "reserved / limited broadcast (RFC 1112, RFC 919)"),
    ("168.63.129.16/32", "the Azure WireServer / metadata address"),
)
# IANA IPv6 Special-Purpose Address Registry, for what is inside global unicast 2000::/3 (RFC 4291); all
# else (loopback, unspecified, ULA, link-local, site-local, multicast, discard, SRv6, ...) is outside it.
_IPV6_REFUSED = _table(
    ("2001::/23", "IETF protocol assignments (RFC 2928)"), ("2001:db8::/32", "documentation (RFC 3849)"),
    ("3fff::/20", "documentation (RFC 9637)"),  # 6to4 2002::/16 and Teredo 2001::/32: see _embedded_ipv4
)
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, list[ipaddress.IPv4Address], bool] | None:
    """``(form, embedded IPv4 addresses, whether a packet to it goes to that IPv4)`` or None."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", [address.ipv4_mapped], True
    if address in _NAT64:
        return "NAT64 (RFC 6052)", [low32], True
    if address in _NAT64_LOCAL:  # RFC 8215 lets the operator pick any RFC 6052 layout; the /96 one is shown
        return "local-use NAT64 (RFC 8215)", [low32], False
    if address.sixtofour is not None:
        return "6to4 (RFC 3056)", [address.sixtofour], False
    if address.teredo is not None:
        return "Teredo (RFC 4380)", list(address.teredo), False  # (server, client)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        return "IPv4-compatible (deprecated, RFC 4291)", [low32], False
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why ``address`` may not be fetched (e.g. ``"loopback (RFC 1122)"``), or None when it is public.

    An IPv6 form carrying an IPv4 address (see the module docstring) is refused with the embedded address
    named when that address is refused; IPv4-mapped and NAT64 ``64:ff9b::/96`` forms of a public address pass.
    """
    if isinstance(address, ipaddress.IPv6Address):
        form = _embedded_ipv4(address)
        if form is not None:
            name, embedded, translated = form
            for ipv4 in embedded:
                inner = refusal_reason(ipv4)
                if inner is not None:
                    return f"the {name} form of {ipv4}, {inner}"
            if translated:
                return None
            return f"the {name} form of {' / '.join(map(str, embedded))}, not globally reachable (IANA)"
        if address not in _GLOBAL_UNICAST:
            return "outside IPv6 global unicast 2000::/3 (loopback, link-local, unique-local, multicast, reserved)"
    for network, label in _IPV4_REFUSED if address.version == 4 else _IPV6_REFUSED:
        if address in network:
            return label
    if not address.is_global:
        return "not globally reachable (IANA special-purpose registry)"
    return None


class UrlFetchError(ValueError):
    """The URL was refused or could not be fetched.

    Attributes:
        status: the HTTP status the service should answer with (400, 403, 408 or 413).
        code: a short machine-readable error code.
    """

    def __init__(self, message: str, status: int = 400, code: str = "image_url_fetch_failed"):
        super().__init__(message)
        self.status = status
        self.code = code

    def __reduce__(self):  # keep it picklable across Ray processes
        return UrlFetchError, (str(self), self.status, self.code)


def _parse(url: str) -> httpx.URL:
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as e:
        raise UrlFetchError(f"image_url is not a valid URL ({e}): {url!r}", 400, "invalid_image_url") from e
    if target.scheme not in ("http", "https") or not target.host:
        raise UrlFetchError(f"image_url must be an http:// or https:// URL with a host, got {url!r}",
                            400, "invalid_image_url")
    return target


async def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (an IP literal is its own answer), in resolver order."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UrlFetchError(f"image_url host {host!r} does not resolve: {getattr(e, 'strerror', e)}", 400,
                            "image_url_unresolvable") from e
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))


async def _checked_addresses(target: httpx.URL, allow: Sequence[ipaddress._BaseNetwork]) -> list[IPAddress]:
    """Resolve ``target``'s host once; every address must be allowed or public, else 403."""
    host = target.raw_host.decode("ascii")
    addresses = await _resolve(host, target.port or (443 if target.scheme == "https" else 80))
    if not addresses:
        raise UrlFetchError(f"image_url host {host!r} resolves to no address", 400, "image_url_unresolvable")
    for address in addresses:
        reason = None if any(address in net for net in allow) else refusal_reason(address)
        if reason is not None:
            raise UrlFetchError(f"image_url host {host!r} resolves to {address}, {reason}; only public addresses "
                                "may be fetched", 403, "image_url_forbidden")
    return addresses


async def _send_pinned(client: httpx.AsyncClient, target: httpx.URL, addresses: list[IPAddress]) -> httpx.Response:
    """GET ``target`` from the first of the checked ``addresses`` that accepts a connection."""
    headers = {"Host": target.netloc.decode("ascii"), "Accept-Encoding": "identity"}
    # SNI and certificate check on the URL's host (ssl treats an IP literal as an IP SAN check, as httpcore does).
    extensions = {"sni_hostname": target.raw_host.decode("ascii")} if target.scheme == "https" else {}
    error: httpx.ConnectError | None = None
    for address in addresses:
        request = client.build_request("GET", target.copy_with(host=str(address)), headers=headers,
                                       extensions=extensions)
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as e:
            error = e
    raise error


class _Inflater:
    """Incremental ``gzip`` / ``deflate`` (zlib or raw) decoder that stops once output passes ``limit`` bytes.

    ``zlib``'s ``max_length`` caps each call's output, so a decompression bomb costs at most ``limit + 1``
    bytes of memory before :class:`ObjectTooLarge` is raised.
    """

    def __init__(self, encoding: str, limit: int):
        self.encoding, self.limit, self.produced, self._first = encoding, limit, 0, True
        self._z = zlib.decompressobj(zlib.MAX_WBITS | 16 if encoding in ("gzip", "x-gzip") else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.limit - self.produced + 1)
        except zlib.error as e:
            if self.encoding != "deflate" or not self._first:
                raise UrlFetchError(f"image_url body is not valid {self.encoding}: {e}", 400) from e
            self._z = zlib.decompressobj(-zlib.MAX_WBITS)  # servers that send raw deflate (as httpx allows)
            out = self._z.decompress(data, self.limit + 1)
        self._first = False
        self.produced += len(out)
        if self.produced > self.limit:
            raise ObjectTooLarge(f"{self.encoding} body inflates past {self.limit} bytes")
        return out

    def finish(self) -> None:
        """Raise if the stream stopped before the compressed data's end marker (a truncated body)."""
        if not self._z.eof:
            raise UrlFetchError(f"image_url {self.encoding} body ended before its end marker", 400)


def _inflater(content_encoding: str, limit: int) -> _Inflater | None:
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip().lower() not in ("", "identity")]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
        raise UrlFetchError(f"image_url answered with Content-Encoding {content_encoding!r}; expected identity "
                            "(asked for), gzip or deflate", 400)
    return _Inflater(codings[0], limit)


async def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ObjectTooLarge(f"{declared} bytes declared")
    inflater = _inflater(response.headers.get("content-encoding", ""), max_bytes)
    body, raw = bytearray(), 0
    async for chunk in response.aiter_raw():
        raw += len(chunk)
        if raw > max_bytes:
            raise ObjectTooLarge(f"more than {max_bytes} bytes on the wire")
        body += inflater.feed(chunk) if inflater else chunk
    if inflater:
        inflater.finish()
    return bytes(body)


async def fetch_image_url(url: str, max_bytes: int, timeout_s: float,
                          allow_networks: Sequence[str] = ()) -> bytes:
    """Download an image URL under the SSRF rules above.

    Args:
        url: the shopper's ``http(s)://`` URL.
        max_bytes: body size limit in bytes, both as sent (compressed) and as returned (decoded).
        timeout_s: limit for the whole fetch (resolution, all redirects, the body), in seconds.
        allow_networks: CIDRs exempt from the address rules (e.g. ``["10.0.5.0/24"]``), matched against the
            address connected to.

    Returns:
        The response body (decoded if the server sent ``gzip``/``deflate`` anyway).

    Raises:
        UrlFetchError: with ``status`` 400 (``invalid_image_url``: bad scheme or URL;
            ``image_url_unresolvable``; ``image_url_fetch_failed``: connection or HTTP error, too many
            redirects, unsupported or broken ``Content-Encoding``), 403 (``image_url_forbidden``: an address
            the rules refuse, also after a redirect), 408 (``image_url_timeout``) or 413
            (``image_url_too_large``, raw or decoded).
    """
    allow = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
    try:
        return await asyncio.wait_for(_fetch(url, max_bytes, allow, timeout_s), timeout=timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException) as e:
        raise UrlFetchError(f"image_url timed out after {timeout_s} s: {url}", 408, "image_url_timeout") from e


async def _fetch(url: str, max_bytes: int, allow, timeout_s: float) -> bytes:
    for _ in range(MAX_REDIRECTS + 1):
        target = _parse(url)
        addresses = await _checked_addresses(target, allow)
        # A fresh pool per hop: a kept-alive connection (and its TLS identity) is never reused for another host.
        async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=timeout_s) as client:
            try:
                response = await _send_pinned(client, target, addresses)
                try:
                    if response.is_redirect:
                        url = urljoin(str(target), response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise UrlFetchError(f"image_url answered HTTP {response.status_code}: {target}", 400)
                    return await _read_body(response, max_bytes)
                finally:
                    await response.aclose()
            except ObjectTooLarge as e:
                raise UrlFetchError(f"image_url body is over the {max_bytes}-byte limit ({e})", 413,
                                    "image_url_too_large") from e
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as e:
                raise UrlFetchError(f"image_url could not be fetched: {type(e).__name__}: {e}", 400) from e
    raise UrlFetchError(f"image_url redirected more than {MAX_REDIRECTS} times", 400)
