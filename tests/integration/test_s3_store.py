"""S3Store against an S3 API server over HTTP (moto's server: a stand-in for AWS S3, same wire protocol)."""

from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from skuvid.brokers import free_port
from skuvid.settings import Settings, StoreKind
from skuvid.storage import S3Store, object_keys, open_store


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
    keys = object_keys("videos/", "SKU-9", "cd" * 32)
    try:
        url = await store.put(keys["video"], b"\x00\x01mp4", "video/mp4")
        assert url == f"https://cdn.example/videos/SKU-9/{'cd' * 32}.mp4"
        assert await store.get(keys["video"]) == b"\x00\x01mp4"
        assert await store.get(keys["manifest"]) is None
    finally:
        await store.close()
    head = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").head_object(
        Bucket="skuvid-test", Key=keys["video"])
    assert head["ContentType"] == "video/mp4"
    assert "immutable" in head["CacheControl"]
