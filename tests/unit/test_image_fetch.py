"""Product image fetching: allow-lists, SSRF guard, size/pixel/type/time limits, file root; fitting to the frame.

HTTP cases run against a real ``http.server`` on 127.0.0.1, so they pass ``allow_private=True`` (the guard is
tested on its own: loopback is refused without it).
"""

from __future__ import annotations

import io
import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from inference.image_fetch import ImageFetchError, _is_forbidden, embedded_ipv4, fetch_image, fetch_image_for, fit_image
from schemas.events import Reason
from skuvid.settings import Settings


def png_bytes(size=(40, 30), colour=(200, 30, 30), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format="PNG")
    return buf.getvalue()


RED_PNG = png_bytes()
HUGE_PNG = png_bytes((3000, 3000), 0, mode="L")  # 9 Mpx of zeros: a few KB on the wire


class Handler(BaseHTTPRequestHandler):
    """Routes for each case; ``/count`` tells how many bytes the last streamed body sent."""

    sent = 0

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        routes = {
            "/ok.png": lambda: self._send(200, "image/png", RED_PNG),
            "/ok-charset.png": lambda: self._send(200, "image/png; charset=binary", RED_PNG),
            "/page": lambda: self._send(200, "text/html", b"<html>not an image</html>"),
            "/junk.png": lambda: self._send(200, "image/png", b"\x89PNG not really"),
            "/huge.png": lambda: self._send(200, "image/png", HUGE_PNG),
            "/declared-big": lambda: self._send(200, "image/png", RED_PNG, length=50_000_000),
            "/stream-big": self._stream_big,
            "/slow": self._slow,
            "/stall": self._stall,
            "/missing": lambda: self._send(404, "text/plain", b"no"),
            "/redirect": lambda: self._redirect("/ok.png"),
            "/redirect-file": lambda: self._redirect("file:///etc/passwd"),
            "/loop": lambda: self._redirect("/loop"),
        }
        routes.get(self.path, lambda: self._send(404, "text/plain", b"no"))()

    def _send(self, status: int, ctype: str, body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream_big(self) -> None:
        """No Content-Length: the body ends when the connection closes; 64 MiB if nobody stops reading."""
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Connection", "close")
        self.end_headers()
        Handler.sent = 0
        try:
            for _ in range(1024):
                self.wfile.write(b"\0" * 65536)
                Handler.sent += 65536
        except OSError:
            pass

    def _stall(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(RED_PNG)))
        self.end_headers()
        self.wfile.flush()
        time.sleep(3)

    def _slow(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(RED_PNG)))
        self.end_headers()
        try:
            for byte in RED_PNG:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "red.png").write_bytes(RED_PNG)
    (tmp_path / "secret.png").write_bytes(RED_PNG)
    return images


def fetch(url: str, root: Path, **overrides) -> Image.Image:
    kwargs = dict(allowed_schemes=("http", "https", "file"), allowed_hosts=(), file_root=root,
                  max_bytes=1_000_000, max_pixels=4_000_000, timeout_s=5.0, allow_private=True)
    return fetch_image(url, **(kwargs | overrides))


def refused(url: str, root: Path, **overrides) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as info:
        fetch(url, root, **overrides)
    err = info.value
    assert err.reason is Reason.IMAGE_FETCH_FAILED
    assert url in err.message and err.message == str(err)
    return err


# --- http ----------------------------------------------------------------------------------------------------


def test_fetches_and_decodes_an_image_over_http(server, root):
    img = fetch(f"{server}/ok.png", root)
    assert img.mode == "RGB" and img.size == (40, 30)
    assert img.getpixel((5, 5)) == (200, 30, 30)
    assert fetch(f"{server}/ok-charset.png", root).size == (40, 30)


def test_loopback_is_refused_by_default_and_fetched_when_allowed(server, root):
    err = refused(f"{server}/ok.png", root, allow_private=False)
    assert "non-public address 127.0.0.1" in err.message
    assert fetch(f"{server}/ok.png", root, allow_private=True).size == (40, 30)


def test_localhost_by_name_is_refused(server, root):
    port = server.rsplit(":", 1)[1]
    assert "non-public address" in refused(f"http://localhost:{port}/ok.png", root, allow_private=False).message


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
     "::ffff:10.0.0.1", "::"],
)
def test_non_public_addresses_are_forbidden(address):
    assert _is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert not _is_forbidden(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["ftp://example.com/a.png", "gopher://example.com/", "data:image/png;base64,AAAA"])
def test_schemes_outside_the_allow_list_are_refused(url, root):
    assert "is not allowed" in refused(url, root).message


@pytest.mark.parametrize("url", ["http://[::1/x.png", "http://[not-an-ip]/x.png",
                                 "file://[::1/x.png", "http://example.com:99999/x.png"])
def test_urls_that_do_not_parse_are_refused_as_bad_input(url, root):
    err = refused(url, root)
    assert "malformed URL" in err.message or "bad port" in err.message
    assert not err.retryable


def test_http_is_refused_when_only_https_is_allowed(server, root):
    assert "scheme 'http' is not allowed" in refused(f"{server}/ok.png", root, allowed_schemes=("https",)).message


def test_host_allow_list(server, root):
    err = refused(f"{server}/ok.png", root, allowed_hosts=("img.example.com",))
    assert "host '127.0.0.1' is not in the allowed hosts" in err.message
    assert fetch(f"{server}/ok.png", root, allowed_hosts=("127.0.0.1",)).size == (40, 30)


def test_content_type_must_be_an_image(server, root):
    assert "content type 'text/html' is not image/*" in refused(f"{server}/page", root).message


def test_declared_length_over_the_limit_is_refused_before_reading(server, root):
    assert "Content-Length 50000000 is over the 1000000-byte limit" in refused(f"{server}/declared-big", root).message


def test_streamed_body_stops_just_past_the_limit(server, root):
    err = refused(f"{server}/stream-big", root, max_bytes=200_000)
    assert "body is over the 200000-byte limit" in err.message
    time.sleep(0.2)
    assert Handler.sent < 64 * 1024 * 1024  # the server was cut off long before its 64 MiB


def test_pixel_limit_is_checked_from_the_header(server, root):
    err = refused(f"{server}/huge.png", root, max_pixels=1_000_000)
    assert "image is 3000x3000 = 9000000 pixels, over 1000000" in err.message


def test_pillow_decompression_bomb_guard_is_an_error(server, root, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)  # Pillow's own guard, below our limit here
    assert "decompression bomb" in refused(f"{server}/huge.png", root, max_pixels=50_000_000).message


@pytest.mark.parametrize(
    ("address", "inside"),
    [
        ("2002:7f00:1::1", "127.0.0.1"),  # 6to4
        ("2002:a00:1::1", "10.0.0.1"),
        ("64:ff9b::7f00:1", "127.0.0.1"),  # NAT64 well-known prefix
        ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),  # NAT64 local-use prefix
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),  # Teredo (client obfuscated)
        ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
        ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible
        ("::c0a8:101", "192.168.1.1"),
    ],
)
def test_ipv6_forms_wrapping_a_non_public_ipv4_are_forbidden(address, inside):
    ip = ipaddress.ip_address(address)
    assert ipaddress.ip_address(inside) in embedded_ipv4(ip)
    assert _is_forbidden(ip)


@pytest.mark.parametrize("address", ["2002:808:808::1", "64:ff9b::808:808"])
def test_ipv6_forms_wrapping_a_public_ipv4_follow_the_ipv4(address):
    assert embedded_ipv4(ipaddress.ip_address(address)) == [ipaddress.ip_address("8.8.8.8")]


@pytest.mark.parametrize("host", ["2130706433", "017700000001", "0x7f000001", "0x7f.0.0.1", "127.1", "0177.0.0.1"])
def test_decimal_octal_and_hex_ipv4_literals_of_loopback_are_refused(server, root, host):
    port = server.rsplit(":", 1)[1]
    err = refused(f"http://{host}:{port}/ok.png", root, allow_private=False)
    assert "non-public address 127.0.0.1" in err.message


def test_timeouts_and_server_errors_are_transient_and_refusals_are_not(server, root):
    assert refused(f"{server}/slow", root, timeout_s=0.3).retryable
    assert not refused(f"{server}/missing", root).retryable
    assert not refused(f"{server}/junk.png", root).retryable
    assert not refused(f"{server}/ok.png", root, allow_private=False).retryable


def test_undecodable_body_is_refused(server, root):
    assert "not a decodable image" in refused(f"{server}/junk.png", root).message


def test_http_errors_are_refused(server, root):
    assert "HTTP status 404" in refused(f"{server}/missing", root).message


def test_whole_download_is_bounded_by_the_timeout(server, root):
    started = time.monotonic()
    assert "timed out" in refused(f"{server}/slow", root, timeout_s=0.3).message
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert "timed out" in refused(f"{server}/stall", root, timeout_s=0.3).message
    assert time.monotonic() - started < 1.0


def test_redirects_are_followed_and_vetted(server, root):
    assert fetch(f"{server}/redirect", root).size == (40, 30)
    assert "redirect to scheme 'file' is not allowed" in refused(f"{server}/redirect-file", root).message
    assert "more than 3 redirects" in refused(f"{server}/loop", root).message


def test_unresolvable_host_is_refused(root):
    assert "cannot resolve host" in refused("http://no-such-host.invalid/a.png", root).message


# --- file: ---------------------------------------------------------------------------------------------------


def test_file_url_under_the_root_is_read(root):
    assert fetch((root / "red.png").as_uri(), root).size == (40, 30)


def test_file_url_outside_the_root_is_refused(root):
    err = refused((root.parent / "secret.png").as_uri(), root)
    assert "outside the image root" in err.message


def test_file_url_traversal_is_refused(root):
    assert "outside the image root" in refused(f"file://{root}/../secret.png", root).message
    assert "outside the image root" in refused(f"file://{root}/%2E%2E/secret.png", root).message


def test_symlink_out_of_the_root_is_refused(root):
    (root / "link.png").symlink_to(root.parent / "secret.png")
    assert "outside the image root" in refused((root / "link.png").as_uri(), root).message


def test_file_url_with_a_remote_host_is_refused(root):
    assert "is not local" in refused("file://fileserver/share/a.png", root).message


def test_missing_file_and_directory_are_refused(root):
    assert "file not found" in refused((root / "nope.png").as_uri(), root).message
    (root / "dir").mkdir()
    assert "is not a regular file" in refused((root / "dir").as_uri(), root).message


def test_file_over_the_byte_limit_is_refused(root):
    assert "over the 100-byte limit" in refused((root / "red.png").as_uri(), root, max_bytes=100).message


def test_fetch_image_for_uses_the_settings(root):
    settings = Settings(image_file_root=root, image_allowed_schemes=("file",))
    assert fetch_image_for(settings, (root / "red.png").as_uri()).size == (40, 30)
    with pytest.raises(ImageFetchError, match="scheme 'https' is not allowed"):
        fetch_image_for(settings, "https://example.com/a.png")


# --- decoding details ----------------------------------------------------------------------------------------


def test_transparent_pixels_become_white(root):
    (root / "cut.png").write_bytes(png_bytes((10, 10), (0, 0, 0, 0), mode="RGBA"))
    assert fetch((root / "cut.png").as_uri(), root).getpixel((3, 3)) == (255, 255, 255)


def test_exif_orientation_is_applied(root):
    img = Image.new("RGB", (40, 20), (10, 200, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    (root / "phone.jpg").write_bytes(buf.getvalue())
    assert fetch((root / "phone.jpg").as_uri(), root).size == (20, 40)


# --- fit_image -----------------------------------------------------------------------------------------------


def wide_red() -> Image.Image:
    return Image.new("RGB", (200, 100), (200, 30, 30))


def test_fit_pad_keeps_the_whole_image_undistorted():
    out = fit_image(wide_red(), 64, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    assert out.getpixel((32, 32)) == (200, 30, 30)
    assert out.getpixel((32, 2)) == (255, 255, 255) and out.getpixel((32, 61)) == (255, 255, 255)
    rows = [y for y in range(64) if out.getpixel((32, y))[1] < 128]
    assert len(rows) == 32  # 200x100 -> 64x32: aspect kept


def test_fit_crop_fills_the_frame():
    out = fit_image(wide_red(), 64, 64, policy="crop")
    assert out.size == (64, 64)
    assert {out.getpixel((x, y)) for x in (0, 63) for y in (0, 63)} == {(200, 30, 30)}


def test_fit_crop_cuts_equally_from_both_sides():
    img = Image.new("RGB", (300, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 100, 100))
    img.paste((0, 255, 0), (200, 0, 300, 100))
    out = fit_image(img, 100, 100, policy="crop")
    assert out.getpixel((50, 50)) == (0, 0, 255)
    assert out.getpixel((1, 50))[2] > 200 and out.getpixel((98, 50))[2] > 200


def test_fit_refuses_bad_arguments():
    with pytest.raises(ValueError, match="policy must be 'pad' or 'crop', got 'stretch'"):
        fit_image(wide_red(), 64, 64, policy="stretch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target size must be positive, got 0x64"):
        fit_image(wide_red(), 0, 64)
