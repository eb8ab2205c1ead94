"""S3Store against an S3 API server over HTTP (moto's server: a stand-in for AWS S3, same wire protocol)."""

from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from skuvid.brokers import free_port
from skuvid.settings import Settings, StoreKind
from skuvid.storage import S3Store, manifest_key, object_keys, open_store, render_folder


@pytest.fixture(scope="module")
def s3_endpoint():
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                 aws_secret_access_key="test").create_bucket(Bucket="skuvid-test")
    yield endpoint
    server.stop()


@pytest.fixture(autouse=True)
def aws_test_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")


async def test_put_get_over_the_s3_api(s3_endpoint):
    settings = Settings(store=StoreKind.S3, s3_bucket="skuvid-test", s3_endpoint_url=s3_endpoint,
                        cdn_base_url="https://cdn.example")
    store = open_store(settings)
    assert isinstance(store, S3Store)
    keys = object_keys("videos/", "SKU-9", "cd" * 32, "fedcba9876543210")
    try:
        url = await store.put(keys["video"], b"\x00\x01mp4", "video/mp4")
        assert url == f"https://cdn.example/videos/SKU-9/{'cd' * 32}/fedcba9876543210.mp4"
        assert await store.get(keys["video"]) == b"\x00\x01mp4"
        assert await store.get(keys["manifest"]) is None
    finally:
        await store.close()
    head = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").head_object(
        Bucket="skuvid-test", Key=keys["video"])
    assert head["ContentType"] == "video/mp4"
    assert "immutable" in head["CacheControl"]


async def test_put_new_is_a_conditional_write_and_renders_can_be_listed_and_deleted(s3_endpoint):
    store = S3Store("skuvid-test", endpoint_url=s3_endpoint, region="us-east-1", cdn_base_url="")
    folder = render_folder("videos/", "SKU-8", "ef" * 32)
    manifest = manifest_key("videos/", "SKU-8", "ef" * 32)
    try:
        assert await store.put_new(manifest, b"first", "application/json") is True
        assert await store.put_new(manifest, b"second", "application/json") is False
        assert await store.get(manifest) == b"first"
        for name in ("r1.mp4", "r1.jpg", "r2.mp4"):
            await store.put(folder + name, b"x", "video/mp4")
        assert sorted(await store.keys_under(folder)) == [folder + "r1.jpg", folder + "r1.mp4", folder + "r2.mp4"]
        await store.delete(folder + "r2.mp4")
        assert sorted(await store.keys_under(folder)) == [folder + "r1.jpg", folder + "r1.mp4"]
    finally:
        await store.close()
