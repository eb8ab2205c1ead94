"""Where finished videos live: a local folder (demo "CDN") or an S3 bucket behind a CDN.

Each request (its key is a hash of every input that changes the video) has one manifest — the published
``video.ready`` payload — at ``<prefix><sku>/<request_key>.json``; it is written only if absent, so the
first render of a request to finish is *the* video of that request and a redelivery republishes it without
rendering again. A render's files sit under ``<prefix><sku>/<request_key>/<render_id>.*`` (``render_id``:
the start of the MP4's SHA-256), never overwritten: a CDN may cache them forever, and two renders of one
request (a rebalance, a crash) cannot mix their files. Files no manifest names are swept (``sweep``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import ClientError

from skuvid.settings import Settings, StoreKind

IMMUTABLE = "public, max-age=31536000, immutable"


class ObjectStore(Protocol):
    async def put(self, key: str, data: bytes, content_type: str) -> str:
        """Store ``data`` under ``key``; return its public URL."""

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """Store ``data`` under ``key`` only if no object is there (atomically); False when one was."""

    async def keys_under(self, prefix: str) -> list[str]:
        """Keys of the objects whose key starts with ``prefix``."""

    async def delete(self, key: str) -> None:
        """Remove the object (nothing when absent)."""

    async def get(self, key: str) -> bytes | None:
        """The object's bytes, or None when absent."""

    def url_for(self, key: str) -> str: ...

    async def close(self) -> None: ...


def manifest_key(prefix: str, sku: str, request_key: str) -> str:
    """The key of a request's manifest: written once, by the first render of the request to finish."""
    return f"{prefix}{sku}/{request_key}.json"


def render_folder(prefix: str, sku: str, request_key: str) -> str:
    """The prefix under which every render of one request keeps its files."""
    return f"{prefix}{sku}/{request_key}/"


def render_id(sha256: str) -> str:
    """The name of one render's files: the start of its MP4's SHA-256."""
    return sha256[:16]


def object_keys(prefix: str, sku: str, request_key: str, render: str) -> dict[str, str]:
    """Keys of one render's video, poster and feed cut, and of its request's manifest."""
    base = render_folder(prefix, sku, request_key) + render
    return {"video": f"{base}.mp4", "poster": f"{base}.jpg", "feed": f"{base}.feed.mp4",
            "manifest": manifest_key(prefix, sku, request_key)}


class LocalStore:
    """A folder; URLs are ``cdn_base_url + key`` or ``file://`` URIs when no CDN is configured."""

    def __init__(self, root: Path, cdn_base_url: str = "") -> None:
        self.root = root.resolve()
        self.cdn_base_url = cdn_base_url

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self._path(key)
        os.replace(self._staged(path, data), path)  # atomic: readers never see half a video
        return self.url_for(key)

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        path = self._path(key)
        staged = self._staged(path, data)
        try:
            os.link(staged, path)  # atomic, and fails when the name exists: create-if-absent
        except FileExistsError:
            return False
        finally:
            os.unlink(staged)
        return True

    async def get(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.exists() else None

    async def keys_under(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rpartition("/")[0]) if "/" in prefix else self.root
        if not folder.is_dir():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not Path(k).name.startswith(".tmp-"))

    async def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    @staticmethod
    def _staged(path: Path, data: bytes) -> Path:
        """``data`` in a temporary file next to ``path``, readable like any CDN object."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        return Path(tmp)

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
                 access_key_id: str | None = None, secret_access_key: str | None = None,
                 client_attempts: int = 3) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.cdn_base_url = cdn_base_url
        # botocore's default (legacy mode: 5 tries, up to ~15 s of sleeps) would hide an outage from the renderer,
        # whose classified, logged and counted retries are the policy; standard mode, few tries, surfaces it.
        self._config = AioConfig(retries={"mode": "standard", "max_attempts": client_attempts})
        self._session = aioboto3.Session(region_name=region, aws_access_key_id=access_key_id,
                                         aws_secret_access_key=secret_access_key)
        self._stack = contextlib.AsyncExitStack()
        self._client = None

    async def _s3(self):
        if self._client is None:
            self._client = await self._stack.enter_async_context(
                self._session.client("s3", endpoint_url=self.endpoint_url, config=self._config)
            )
        return self._client

    async def put(self, key: str, data: bytes, content_type: str) -> str:
        s3 = await self._s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, CacheControl=IMMUTABLE)
        return self.url_for(key)

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """A conditional write (``If-None-Match: *``): S3 answers 412 when the key exists."""
        s3 = await self._s3()
        try:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                CacheControl=IMMUTABLE, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise
        return True

    async def keys_under(self, prefix: str) -> list[str]:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        return [o["Key"] async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
                for o in page.get("Contents", [])]

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=key)

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
            client_attempts=settings.s3_client_attempts,
        )
    return LocalStore(settings.local_store_dir, settings.cdn_base_url)
