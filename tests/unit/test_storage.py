import pytest

from skuvid.storage import LocalStore, object_keys


async def test_local_store_round_trip_and_urls(tmp_path):
    store = LocalStore(tmp_path, cdn_base_url="https://cdn.example/v")
    keys = object_keys("videos/", "SKU-1", "ab" * 32)
    url = await store.put(keys["video"], b"mp4", "video/mp4")
    assert url == f"https://cdn.example/v/videos/SKU-1/{'ab' * 32}.mp4"
    assert await store.get(keys["video"]) == b"mp4"
    assert await store.get(keys["manifest"]) is None


async def test_local_store_refuses_keys_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="escapes"):
        await LocalStore(tmp_path / "root").put("../evil", b"x", "text/plain")
