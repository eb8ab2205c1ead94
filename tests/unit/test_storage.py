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


async def test_an_unreachable_s3_endpoint_reaches_the_caller_after_the_configured_tries():
    """A real aiobotocore client against a TCP server that drops every connection: the failure surfaces after
    ``client_attempts`` tries (botocore's own default would make five, with up to ~15 s of sleeps in between),
    so an outage meets the renderer's classified retries (logged, counted, bounded by Settings)."""
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    from skuvid.storage import S3Store

    async def connections_until_failure(attempts: int) -> tuple[int, float]:
        connections = 0

        async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal connections
            connections += 1
            writer.close()

        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        store = S3Store("bucket", endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", cdn_base_url="",
                        access_key_id="test", secret_access_key="test", client_attempts=attempts)
        started = asyncio.get_running_loop().time()
        try:
            with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
                await store.put("videos/x.mp4", b"mp4", "video/mp4")
            return connections, asyncio.get_running_loop().time() - started
        finally:
            await store.close()
            server.close()
            await server.wait_closed()

    once, once_s = await connections_until_failure(1)
    twice, _ = await connections_until_failure(2)
    assert once < twice  # the setting reaches botocore: a second try opens connections of its own
    assert once_s < 1.5  # one try: no backoff sleep before the caller hears of it
