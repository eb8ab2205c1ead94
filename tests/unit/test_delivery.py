"""Delivery to the store: the first render of a request to store its manifest is the request's video."""

from __future__ import annotations

import hashlib
from pathlib import Path

from consumers.delivery import stored_ready, upload
from inference.encode import EncodedFile, ImageFile
from inference.postprocess import Renditions
from inference.render_job import RenderedVideo
from schemas.events import QualityReport
from skuvid.settings import Settings
from skuvid.storage import LocalStore, render_folder
from tests.reliability.accounting import catalog_products, plan_requests

REQUEST = plan_requests(Settings(model="tiny"), catalog_products(1, "DLV", images=False))[0]


def rendered(tmp: Path, content: bytes) -> RenderedVideo:
    """A render's files (bytes standing in for the MP4 and the poster; two renders never share bytes)."""
    tmp.mkdir(parents=True, exist_ok=True)
    mp4, jpg = tmp / "v.mp4", tmp / "v.jpg"
    mp4.write_bytes(b"mp4" + content)
    jpg.write_bytes(b"jpg" + content)
    sha = hashlib.sha256(mp4.read_bytes()).hexdigest()
    video = EncodedFile(path=mp4, bytes=mp4.stat().st_size, sha256=sha, width=416, height=224, num_frames=49,
                        fps=24, duration_s=2.0)
    poster = ImageFile(path=jpg, bytes=jpg.stat().st_size, sha256=sha, width=416, height=224)
    return RenderedVideo(renditions=Renditions(mp4=video, poster=poster, feed_mp4=None),
                         quality=QualityReport(passed=True, attempts=1), seed=7)


async def store_files(store: LocalStore) -> list[str]:
    return await store.keys_under("v/")


async def test_a_second_render_of_a_request_publishes_the_first_and_leaves_no_file(tmp_path):
    store = LocalStore(tmp_path / "store")
    first = await upload(store, REQUEST, rendered(tmp_path / "a", b"A"), prefix="v/", content_producer="skuvid")
    second = await upload(store, REQUEST, rendered(tmp_path / "b", b"B"), prefix="v/", content_producer="skuvid")
    assert second == first
    assert await stored_ready(store, REQUEST, "v/") == first
    folder = render_folder("v/", REQUEST.sku, REQUEST.request_key)
    video_key = first.video_url.removeprefix((tmp_path / "store").resolve().as_uri() + "/")
    assert sorted(await store.keys_under(folder)) == sorted([video_key, video_key.replace(".mp4", ".jpg")])
    assert hashlib.sha256(await store.get(video_key)).hexdigest() == first.sha256


async def test_files_of_a_render_cut_short_before_its_manifest_are_swept(tmp_path):
    store = LocalStore(tmp_path / "store")
    folder = render_folder("v/", REQUEST.sku, REQUEST.request_key)
    await store.put(folder + "deadbeefdeadbeef.mp4", b"orphan", "video/mp4")  # a crash before the manifest
    ready = await upload(store, REQUEST, rendered(tmp_path / "a", b"A"), prefix="v/", content_producer="skuvid")
    assert folder + "deadbeefdeadbeef.mp4" not in await store.keys_under(folder)
    assert len(await store.keys_under(folder)) == 2 and ready.sha256[:16] in ready.video_url
