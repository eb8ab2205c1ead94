"""Where finished videos live: a local folder (demo "CDN") or an S3 bucket behind a CDN.

Keys are content-addressed by the request key (a hash of every input that changes the video), so a
redelivered request writes the same key again and never yields a second, different object. Next to each video
a small manifest (the published ``video.ready`` payload) lets a redelivery republish without re-rendering.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

import aioboto3
from botocore.exceptions import ClientError

from skuvid.settings import Settings, StoreKind

IMMUTABLE = "public, max-age=31536000, immutable"


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key``; return its public URL."""

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when absent."""

    def url_for(self, key: str) -> str: ...

    async def close(self) -> None: ...


def object_keys(prefix: str, sku: str, request_key: str) -> dict[str, str]:
    """Keys of the video, its poster and its manifest for one request."""
    base = f"{prefix}{sku}/{request_key}"
    return {"video": f"{base}.mp4", "poster": f"{base}.jpg", "feed": f"{base}.feed.mp4", "manifest": f"{base}.json"}


class LocalStore:
    """A folder; URLs are ``cdn_base_url + key`` or ``file://`` URIs when no CDN is configured."""

    def __init__(self, root: Path, cdn_base_url: str = "") -> None:
        self.root = root.resolve()
        self.cdn_base_url = cdn_base_url

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # served to players, like any CDN object
        os.replace(tmp, path)  # atomic: readers never see half a video
        return self.url_for(key)

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    def url_for(self, key: str) -> str:
        if self.cdn_base_url:
            return self.cdn_base_url.rstrip("/") + "/" + key
        return self._path(key).as_uri()

    async def close(self) -> None:
        return None

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"object key escapes the store: {key!r}")
        return path


class S3Store:
    """An S3 bucket (any S3 API endpoint) through aioboto3; one client for the store's lifetime."""

    def __init__(self, bucket: str, *, endpoint_url: str | None, region: str, cdn_base_url: str,
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.cdn_base_url = cdn_base_url
        self._session = aioboto3.Session(region_name=region, aws_access_key_id=access_key_id,
                                         aws_secret_access_key=secret_access_key)
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    async def _s3(self):
        if self._client is None:
            self._client = await self._stack.enter_async_context(
                self._session.client("s3", endpoint_url=self.endpoint_url)
            )
        return self._client

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        s3 = await self._s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, CacheControl=IMMUTABLE)
        return self.url_for(key)

    async def get(self, key: str) -> bytes | None:
        s3 = await self._s3()
        try:
            response = await s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        async with response["Body"] as body:
            return await body.read()

    def url_for(self, key: str) -> str:
        if self.cdn_base_url:
            return self.cdn_base_url.rstrip("/") + "/" + key
        base = (self.endpoint_url or f"https://{self.bucket}.s3.amazonaws.com").rstrip("/")
        return f"{base}/{self.bucket}/{key}" if self.endpoint_url else f"{base}/{key}"

    async def close(self) -> None:
        await self._stack.aclose()
        self._client = None


def open_store(settings: Settings) -> ObjectStore:
    if settings.store is StoreKind.S3:
        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            cdn_base_url=settings.cdn_base_url,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=(settings.s3_secret_access_key.get_secret_value()
                               if settings.s3_secret_access_key else None),
        )
    return LocalStore(settings.local_store_dir, settings.cdn_base_url)
