"""``skuvid render PRODUCT.json --out DIR``: one product to ``DIR/<sku>.mp4`` without Kafka.

The same planning, model, gate and labelling code as the services; only the transport is missing. Everything
the input can get wrong is checked first — the file, its JSON and schema, the safety gate, the image URL and
the image itself — so a bad product is refused in a fraction of a second, before torch or diffusers are even
imported. Only then is the model loaded (``skuvid.composition.load_render_job``).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import orjson
from PIL import Image

from consumers.delivery import upload
from consumers.planning import Planner
from inference.image_fetch import fetch_image_for
from inference.prompt import PromptEngine
from schemas.codec import DecodeError, validate
from schemas.events import ProductCreated, ProductSnapshot, Reason, VideoReady, VideoRequested
from skuvid.errors import SkuvidError
from skuvid.settings import Settings
from skuvid.storage import LocalStore

#: Reasons that blame the input (exit code 2); any other failure is the environment's (exit code 1).
INPUT_REASONS = frozenset({
    Reason.FILE_UNREADABLE, Reason.INVALID_JSON, Reason.SCHEMA_VIOLATION, Reason.OVERSIZED_PAYLOAD,
    Reason.UNSAFE_CONTENT, Reason.EMPTY_CONTENT, Reason.INVALID_PARAMS, Reason.IMAGE_FETCH_FAILED,
})


class InputRefused(SkuvidError):
    """The product file cannot be rendered as it is; ``reason`` says why."""


def read_product(path: Path, max_bytes: int) -> tuple[ProductSnapshot, str]:
    """The snapshot and a source id from a product.created event, or from bare product fields."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputRefused(f"cannot read {path}: {exc.strerror}", reason=Reason.FILE_UNREADABLE) from None
    if len(raw) > max_bytes:
        raise InputRefused(f"{path} is {len(raw)} bytes, limit {max_bytes}", reason=Reason.OVERSIZED_PAYLOAD)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InputRefused(f"not JSON: {exc}", reason=Reason.INVALID_JSON) from None
    try:
        if isinstance(data, dict) and "event_id" in data:
            event = validate(ProductCreated, data)
            return event.snapshot(), event.event_id
        return validate(ProductSnapshot, data), f"file:{path.name}"
    except DecodeError as exc:
        raise InputRefused(exc.message, reason=exc.reason) from None


def anchored(product: ProductSnapshot, folder: Path) -> ProductSnapshot:
    """The product with a relative ``file:`` image path made absolute against the product file's ``folder``."""
    url = product.image_url
    if not url or urlsplit(url).scheme.lower() != "file":
        return product
    path = Path(url2pathname(urlsplit(url).path))
    if path.is_absolute():
        return product
    return product.model_copy(update={"image_url": (folder.resolve() / path).as_uri()})


def prepare(path: Path, settings: Settings) -> tuple[VideoRequested, Image.Image | None, Settings]:
    """Read, validate, safety-check and plan the product, and fetch its image: every input defect raises
    ``InputRefused`` (or the fetch's ``ImageFetchError``) here, before any model code is imported."""
    product, source_id = read_product(path, settings.max_payload_bytes)
    product = anchored(product, path.parent)
    if "image_file_root" not in settings.model_fields_set:
        settings = settings.model_copy(update={"image_file_root": path.parent.resolve()})
    planner = Planner(PromptEngine.load(absolute_terms_policy=settings.absolute_terms_policy), settings)
    plan = planner.plan(product, source_event_id=source_id)
    if plan.failures:
        failed = plan.failures[0]
        raise InputRefused(failed.message, reason=failed.reason, details=dict(failed.details))
    request = plan.requests[0]
    image = fetch_image_for(settings, request.image_url) if request.image_url else None
    return request, image, settings


def render_product_file(path: Path, out_dir: Path, settings: Settings, progress=None) -> VideoReady:
    """Render ``path`` to ``out_dir/<sku>.mp4`` (+ poster and manifest); raises ``SkuvidError`` subclasses."""
    request, image, settings = prepare(path, settings)
    from skuvid.composition import load_render_job  # noqa: PLC0415 - torch and diffusers only past the checks

    if progress:
        progress("loading model", None, None)
    job = load_render_job(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skuvid-render-") as tmp:
        rendered = job.render(request, Path(tmp), image=image, progress=progress)
        store = _SkuNamedStore(out_dir, request.sku)
        return asyncio.run(upload(store, request, rendered, prefix="",
                                  content_producer=settings.label_content_producer))


class _SkuNamedStore(LocalStore):
    """A local store that names the files ``<sku>.mp4`` / ``.jpg`` / ``.json`` / ``.feed.mp4`` in one folder."""

    def __init__(self, root: Path, sku: str) -> None:
        super().__init__(root)
        self.sku = sku

    def _path(self, key: str) -> Path:
        extensions = Path(key).name.partition(".")[2]  # "mp4", "jpg", "json", "feed.mp4"
        return self.root / f"{self.sku}.{extensions}"

    async def put_new(self, key: str, data: bytes, content_type: str) -> bool:
        """Always written: the render asked for now replaces the files of an earlier run in ``--out``."""
        await self.put(key, data, content_type)
        return True

    async def keys_under(self, prefix: str) -> list[str]:
        return []  # one file per kind, each rewritten: no other render's files to sweep
