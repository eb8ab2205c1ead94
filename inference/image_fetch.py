"""Fetch a product photo safely, and fit it to the video frame.

A product's ``image_url`` comes from an upstream catalog, so it is untrusted input: it could point at an
internal service (SSRF), at a local secret file, at a huge download, or at a decompression bomb. The fetch
therefore allows only listed schemes (and hosts, when listed), resolves the host once and connects to that
vetted address itself (no second DNS lookup an attacker could rebind), refuses private, loopback,
link-local, multicast and reserved addresses, follows at most a few redirects (each one vetted again),
streams the body and stops past ``max_bytes``, checks ``Content-Type: image/*``, reads the image header
and refuses more than ``max_pixels`` before decoding, and keeps ``file:`` URLs inside ``file_root``.
Only the standard library speaks HTTP here.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urljoin, urlsplit
from urllib.request import url2pathname

from PIL import Image, ImageOps

from schemas.events import Reason
from skuvid.errors import Outcome, SkuvidError
from skuvid.settings import Settings

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
#: Decoded formats we accept; anything else (PSD, EPS, ...) is refused even if Pillow could read it.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
USER_AGENT = "skuvid-image-fetch/1"
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: IPv6 ranges that carry an IPv4 address in their last 32 bits (NAT64, RFC 6052 and RFC 8215).
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class ImageFetchError(SkuvidError):
    """The product image could not be fetched or decoded; ``message`` names the URL and the cause.

    ``transient`` marks what a later try may fix (a timeout, a refused or reset connection, HTTP 5xx/429, a
    DNS server that did not answer); a forbidden, missing or undecodable image is permanent.
    """

    reason = Reason.IMAGE_FETCH_FAILED

    def __init__(self, url: str, cause: str, *, transient: bool = False) -> None:
        super().__init__(f"cannot fetch image {url[:300]!r}: {cause}", kind=Outcome.RETRY if transient else None,
                         details={"image_url": url[:300]})
        self.url = url
        self.cause = cause


def fetch_image(
    url: str,
    *,
    allowed_schemes: Iterable[str],
    allowed_hosts: Iterable[str],
    file_root: Path,
    max_bytes: int,
    max_pixels: int,
    timeout_s: float,
    allow_private: bool = False,
) -> Image.Image:
    """Download (or read) and decode the image at ``url`` into an RGB ``PIL.Image``.

    ``allowed_hosts`` empty means any host; an entry ``.example.com`` also allows its subdomains.
    ``allow_private`` lifts the private/loopback address guard (local tests and on-premise catalogs only).
    ``timeout_s`` bounds the whole download, not just each socket read. Raises ``ImageFetchError``.
    """
    schemes = {s.lower() for s in allowed_schemes}
    scheme = _split(url, url).scheme.lower()
    if scheme not in schemes:
        raise ImageFetchError(url, f"scheme {scheme!r} is not allowed (allowed: {sorted(schemes)})")
    if scheme == "file":
        data = _read_file(url, file_root=file_root, max_bytes=max_bytes)
    elif scheme in ("http", "https"):
        data = _download(
            url, schemes=schemes, hosts=tuple(h.lower() for h in allowed_hosts), max_bytes=max_bytes,
            timeout_s=timeout_s, allow_private=allow_private,
        )
    else:
        raise ImageFetchError(url, f"scheme {scheme!r} is not supported")
    return _decode(url, data, max_pixels=max_pixels)


def fetch_image_for(settings: Settings, url: str) -> Image.Image:
    """``fetch_image`` with the limits and allow-lists of ``settings``."""
    return fetch_image(
        url,
        allowed_schemes=settings.image_allowed_schemes,
        allowed_hosts=settings.image_allowed_hosts,
        file_root=settings.image_file_root,
        max_bytes=settings.image_max_bytes,
        max_pixels=settings.image_max_pixels,
        timeout_s=settings.image_timeout_s,
        allow_private=settings.image_allow_private,
    )


def fit_image(
    img: Image.Image,
    width: int,
    height: int,
    *,
    policy: Literal["pad", "crop"] = "pad",
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Scale ``img`` to exactly ``width`` x ``height`` without distorting it.

    ``pad`` keeps the whole product (letterbox on ``background``, white like a studio backdrop); ``crop``
    fills the frame and cuts the overflow equally on both sides. Returns a new RGB image.
    """
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    rgb = img.convert("RGB")
    if policy == "crop":
        return ImageOps.fit(rgb, (width, height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    if policy != "pad":
        raise ValueError(f"policy must be 'pad' or 'crop', got {policy!r}")
    scale = min(width / rgb.width, height / rgb.height)
    inner = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    canvas = Image.new("RGB", (width, height), background)
    canvas.paste(rgb.resize(inner, Image.Resampling.LANCZOS), ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


# --- file: ------------------------------------------------------------------------------------------------


def _split(url: str, current: str) -> SplitResult:
    """``urlsplit(current)``; a URL it cannot parse (``http://[::1/x``) is the request's bad input, not a bug."""
    try:
        return urlsplit(current)
    except ValueError as exc:
        raise ImageFetchError(url, f"malformed URL ({exc})") from exc


def _read_file(url: str, *, file_root: Path, max_bytes: int) -> bytes:
    parts = _split(url, url)
    if parts.netloc not in ("", "localhost"):
        raise ImageFetchError(url, f"file URL host {parts.netloc!r} is not local")
    raw_path = unquote(parts.path)
    if "\x00" in raw_path:
        raise ImageFetchError(url, "file path contains a NUL byte")
    root = file_root.resolve()
    try:
        path = Path(url2pathname(parts.path)).resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise ImageFetchError(url, f"file not found ({exc.__class__.__name__})") from exc
    if not path.is_relative_to(root):
        raise ImageFetchError(url, f"file path {str(path)!r} is outside the image root {str(root)!r}")
    if not path.is_file():
        raise ImageFetchError(url, f"{str(path)!r} is not a regular file")
    if path.stat().st_size > max_bytes:
        raise ImageFetchError(url, f"file is {path.stat().st_size} bytes, over the {max_bytes}-byte limit")
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageFetchError(url, f"file is over the {max_bytes}-byte limit")
    return data


# --- http(s): ---------------------------------------------------------------------------------------------


def _download(
    url: str, *, schemes: set[str], hosts: tuple[str, ...], max_bytes: int, timeout_s: float, allow_private: bool
) -> bytes:
    deadline = time.monotonic() + timeout_s
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        parts = _split(url, current)
        scheme = parts.scheme.lower()
        if scheme not in schemes or scheme not in ("http", "https"):
            raise ImageFetchError(url, f"redirect to scheme {scheme!r} is not allowed")
        host = (parts.hostname or "").lower()
        if not host:
            raise ImageFetchError(url, "URL has no host")
        if hosts and not _host_allowed(host, hosts):
            raise ImageFetchError(url, f"host {host!r} is not in the allowed hosts")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise ImageFetchError(url, f"bad port in {current!r}") from exc
        address = _vetted_address(url, host, port, allow_private=allow_private)
        location = _get(url, current, scheme, host, port, address, max_bytes=max_bytes, deadline=deadline)
        if isinstance(location, bytes):
            return location
        try:
            current = urljoin(current, location)
        except ValueError as exc:
            raise ImageFetchError(url, f"malformed redirect Location {location[:200]!r} ({exc})") from exc
    raise ImageFetchError(url, f"more than {MAX_REDIRECTS} redirects")


def _host_allowed(host: str, hosts: tuple[str, ...]) -> bool:
    return any(host == h or (h.startswith(".") and (host.endswith(h) or host == h[1:])) for h in hosts)


def _vetted_address(url: str, host: str, port: int, *, allow_private: bool) -> str:
    """Resolve ``host`` once; every address must be public unless ``allow_private``. Returns the one to use."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        transient = isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_AGAIN
        raise ImageFetchError(url, f"cannot resolve host {host!r} ({exc})", transient=transient) from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ImageFetchError(url, f"host {host!r} has no address")
    if not allow_private:
        for addr in addresses:
            ip = ipaddress.ip_address(addr.split("%", 1)[0])
            if _is_forbidden(ip):
                raise ImageFetchError(url, f"host {host!r} resolves to non-public address {addr}")
    return addresses[0]


def _is_forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not a public address, or an IPv6 address wrapping an IPv4 one that is not public: routers translate
    6to4, NAT64, Teredo, IPv4-mapped and IPv4-compatible forms back to the IPv4 address inside."""
    candidates = embedded_ipv4(ip) or [ip]  # the wrapper ranges themselves are "special purpose"
    return any(
        a.is_private or a.is_loopback or a.is_link_local or a.is_multicast or a.is_reserved
        or a.is_unspecified or not a.is_global
        for a in candidates
    )


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (IPv4-mapped, 6to4, Teredo server and client, NAT64,
    IPv4-compatible); empty for IPv4 and plain IPv6 addresses."""
    if ip.version == 4:
        return []
    assert isinstance(ip, ipaddress.IPv6Address)
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if any(ip in net for net in NAT64_PREFIXES):
        found.append(low32)
    if int(ip) >> 32 == 0 and int(ip) > 1:  # ::a.b.c.d, the deprecated IPv4-compatible form
        found.append(low32)
    return found


def _connection(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``host`` that dials the vetted ``address`` (TLS still verifies ``host``'s certificate)."""
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def dial(_addr: tuple[str, int], timeout: float = timeout, source_address: object = None) -> socket.socket:
        return socket.create_connection((address, port), timeout=timeout)

    conn._create_connection = dial  # type: ignore[attr-defined]  # pin the vetted IP; no second DNS lookup
    return conn


def _get(
    url: str, current: str, scheme: str, host: str, port: int, address: str, *, max_bytes: int, deadline: float
) -> bytes | str:
    """One GET: the body (bytes) or, for a redirect, the ``Location`` (str)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise ImageFetchError(url, "timed out", transient=True)
    parts = _split(url, current)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _connection(scheme, host, port, address, remaining)
    try:
        conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        sock = conn.sock  # kept: getresponse() may hand the socket over to the response and drop it here
        resp = conn.getresponse()
        if resp.status in (301, 302, 303, 307, 308):
            location = resp.getheader("Location")
            if not location:
                raise ImageFetchError(url, f"HTTP {resp.status} without a Location header")
            return location
        if resp.status != 200:
            raise ImageFetchError(url, f"HTTP status {resp.status}", transient=resp.status in TRANSIENT_STATUS)
        content_type = (resp.getheader("Content-Type") or "").split(";", 1)[0].strip().lower()
        if not content_type.startswith("image/"):
            raise ImageFetchError(url, f"content type {content_type or 'missing'!r} is not image/*")
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise ImageFetchError(url, f"Content-Length {length} is over the {max_bytes}-byte limit")
        return _read_body(url, resp, sock, max_bytes=max_bytes, deadline=deadline)
    except (OSError, http.client.HTTPException) as exc:
        cause = "timed out" if isinstance(exc, TimeoutError) else f"{exc.__class__.__name__}: {exc}"
        raise ImageFetchError(url, cause, transient=True) from exc
    finally:
        conn.close()


def _read_body(
    url: str, resp: http.client.HTTPResponse, sock: socket.socket | None, *, max_bytes: int, deadline: float
) -> bytes:
    """Read what has arrived (``read1``), chunk by chunk, each socket wait bounded by the time left, so a
    server trickling bytes cannot stretch the download past the deadline."""
    buf = bytearray()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ImageFetchError(url, "timed out", transient=True)
        if sock is not None:
            sock.settimeout(remaining)
        chunk = resp.read1(CHUNK_BYTES)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise ImageFetchError(url, f"body is over the {max_bytes}-byte limit")


# --- decoding ---------------------------------------------------------------------------------------------


def _decode(url: str, data: bytes, *, max_pixels: int) -> Image.Image:
    """Header first (size check), then decode; decompression-bomb warnings become errors."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ALLOWED_FORMATS:
                raise ImageFetchError(url, f"image format {img.format!r} is not allowed")
            pixels = img.width * img.height
            if pixels > max_pixels:
                raise ImageFetchError(url, f"image is {img.width}x{img.height} = {pixels} pixels, over {max_pixels}")
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageFetchError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageFetchError(url, f"decompression bomb refused ({exc})") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageFetchError(url, f"not a decodable image ({exc.__class__.__name__}: {exc})") from exc
    return _to_rgb(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white (cut-out product shots sit on a white backdrop)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")
