import asyncio

import pytest

from skuvid.storage import LocalStore, manifest_key, object_keys, render_folder


async def test_local_store_round_trip_and_urls(tmp_path):
    store = LocalStore(tmp_path, cdn_base_url="https://cdn.example/v")
    keys = object_keys("videos/", "SKU-1", "ab" * 32, "0123456789abcdef")
    url = await store.put(keys["video"], b"mp4", "video/mp4")
    assert url == f"https://cdn.example/v/videos/SKU-1/{'ab' * 32}/0123456789abcdef.mp4"
    assert keys["manifest"] == manifest_key("videos/", "SKU-1", "ab" * 32) == f"videos/SKU-1/{'ab' * 32}.json"
    assert await store.get(keys["video"]) == b"mp4"
    assert await store.get(keys["manifest"]) is None


async def test_local_store_refuses_keys_outside_its_root(tmp_path):
    with pytest.raises(ValueError, match="escapes"):
        await LocalStore(tmp_path / "root").put("../evil", b"x", "text/plain")


async def test_put_new_writes_once_and_never_replaces(tmp_path):
    store = LocalStore(tmp_path)
    assert await store.put_new("a/m.json", b"first", "application/json") is True
    assert await store.put_new("a/m.json", b"second", "application/json") is False
    assert await store.get("a/m.json") == b"first"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.json"]  # no staged file left behind


async def test_concurrent_put_new_has_exactly_one_winner(tmp_path):
    store = LocalStore(tmp_path)
    wins = await asyncio.gather(*(asyncio.to_thread(asyncio.run, store.put_new("k.json", bytes([i]), "x"))
                                  for i in range(16)))
    assert sum(wins) == 1
    assert await store.get("k.json") == bytes([wins.index(True)])


async def test_keys_under_a_render_folder_and_delete(tmp_path):
    store = LocalStore(tmp_path)
    folder = render_folder("v/", "SKU-1", "ab" * 32)
    for key in (folder + "r1.mp4", folder + "r1.jpg", folder + "r2.mp4", "v/SKU-1/" + "ab" * 32 + ".json",
                "v/SKU-1/other/r.mp4"):
        await store.put(key, b"x", "video/mp4")
    assert await store.keys_under(folder) == [folder + "r1.jpg", folder + "r1.mp4", folder + "r2.mp4"]
    assert await store.keys_under("v/none/") == []
    await store.delete(folder + "r2.mp4")
    await store.delete(folder + "absent.mp4")
    assert await store.keys_under(folder) == [folder + "r1.jpg", folder + "r1.mp4"]
