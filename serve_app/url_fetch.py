"""Fetch a shopper-supplied ``image_url`` safely (no Ray import).

Rules (OWASP "Server-Side Request Forgery Prevention Cheat Sheet"): only ``http``/``https``; the host must
resolve, and every address it resolves to must be public — loopback, private (RFC 1918, RFC 4193),
link-local (incl. the cloud metadata address 169.254.169.254), multicast, reserved and unspecified
addresses are refused before any connection is made; redirects are followed by hand (at most
``MAX_REDIRECTS``) and each hop is checked again; the body is bounded in size and the whole fetch in time.
Operators can allow specific networks (``allow_networks``, CIDR strings) for in-cluster image hosts.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from urllib.parse import ParseResult, urljoin, urlparse

import httpx

from serve_app.storage import ObjectTooLarge

MAX_REDIRECTS = 3


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


def _check_scheme(url: str) -> ParseResult:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UrlFetchError(f"image_url must be an http:// or https:// URL with a host, got {url!r}",
                            400, "invalid_image_url")
    return parsed


async def _check_host(host: str, port: int, allow: Sequence[ipaddress._BaseNetwork]) -> None:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UrlFetchError(f"image_url host {host!r} does not resolve: {e.strerror}", 400,
                            "image_url_unresolvable") from e
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if any(address in net for net in allow):
            continue
        if not address.is_global or address.is_multicast:
            raise UrlFetchError(
                f"image_url host {host!r} resolves to {address}, a loopback/private/link-local/reserved address; "
                "only public addresses may be fetched", 403, "image_url_forbidden")


async def fetch_image_url(url: str, max_bytes: int, timeout_s: float,
                          allow_networks: Sequence[str] = ()) -> bytes:
    """Download an image URL under the SSRF rules above.

    Args:
        url: the shopper's ``http(s)://`` URL.
        max_bytes: body size limit in bytes.
        timeout_s: limit for the whole fetch (all redirects), in seconds.
        allow_networks: CIDRs exempt from the private-address rule (e.g. ``["10.0.5.0/24"]``).

    Returns:
        The response body.

    Raises:
        UrlFetchError: with ``status`` 400 (bad scheme, unresolvable, HTTP error, too many redirects),
            403 (forbidden address), 408 (timeout) or 413 (too large).
    """
    allow = [ipaddress.ip_network(n, strict=False) for n in allow_networks]
    try:
        return await asyncio.wait_for(_fetch(url, max_bytes, allow), timeout=timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException) as e:
        raise UrlFetchError(f"image_url timed out after {timeout_s} s: {url}", 408, "image_url_timeout") from e


async def _fetch(url: str, max_bytes: int, allow) -> bytes:
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            parsed = _check_scheme(url)
            await _check_host(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), allow)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code >= 400:
                        raise UrlFetchError(f"image_url answered HTTP {response.status_code}: {url}", 400)
                    declared = int(response.headers.get("content-length") or 0)
                    if declared > max_bytes:
                        raise ObjectTooLarge(f"{declared} bytes")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > max_bytes:
                            raise ObjectTooLarge(f"more than {max_bytes} bytes")
                    return bytes(body)
            except ObjectTooLarge as e:
                raise UrlFetchError(f"image_url body is over the {max_bytes}-byte limit ({e})", 413,
                                    "image_url_too_large") from e
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as e:
                raise UrlFetchError(f"image_url could not be fetched: {type(e).__name__}: {e}", 400) from e
    raise UrlFetchError(f"image_url redirected more than {MAX_REDIRECTS} times", 400)
