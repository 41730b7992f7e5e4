"""``kind = "ark"``: real Seedream through ByteDance's images API (BytePlus ModelArk, Volcengine).

One task is one ``POST {base_url}/api/v3/images/generations`` (reference §1.11): the prompt,
the contract's exact size as ``"WxH"``, the seed, input images inlined as ``data:`` URLs (the
upstream cannot reach this server's files), 4.0's ``max_images`` as group generation, 3.0's
``guidance_scale``, ``watermark`` off unless the engine turns it on. Each returned image is
downloaded (or decoded from ``b64_json``), checked, fitted to the contract's size and stored as
this server's own result; the task is charged for the images actually returned.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import threading
from collections.abc import Mapping
from typing import Any

import orjson
from PIL import Image

from seedbed import netguard
from seedbed.config import ArkEngineSettings
from seedbed.engines.base import Artifact, EngineJob, NoteFn, ProgressFn
from seedbed.engines.relay import RelayEngine, UpstreamRefused, quote
from seedbed.errors import TaskFailure

__all__ = ["DEFAULT_MODEL_IDS", "ArkEngine", "ark_model_ids"]

#: Seedream model id -> Ark model id (reference §1.11); ``model_ids`` in the engine's table
#: overrides or adds entries, since Ark's versions and endpoint ids change
DEFAULT_MODEL_IDS: Mapping[str, str] = {
    "bytedance/seedream": "seedream-3-0-t2i-250415",
    "bytedance/seedream-v4-text-to-image": "seedream-4-0-250828",
    "bytedance/seedream-v4-edit": "seedream-4-0-250828",
    "seedream/4.5-text-to-image": "seedream-4-5-251128",
    "seedream/4.5-edit": "seedream-4-5-251128",
    "seedream/5-lite-text-to-image": "seedream-5-0-260128",
    "seedream/5-lite-image-to-image": "seedream-5-0-260128",
}

#: the models whose Ark id takes ``output_format`` (5.0 Lite only, per §1.11)
_OUTPUT_FORMAT_MODELS = frozenset(
    {"seedream/5-lite-text-to-image", "seedream/5-lite-image-to-image"}
)
#: Ark's seed range is [-1, 2^31 - 1]; kie's is int64, folded into it
_SEED_MODULUS = 2**31


def ark_model_ids(settings: ArkEngineSettings) -> dict[str, str]:
    """The engine's map: the defaults with ``model_ids`` over them (an empty id removes one)."""
    merged = {**DEFAULT_MODEL_IDS, **settings.model_ids}
    return {model: ark for model, ark in merged.items() if ark}


class ArkEngine(RelayEngine):
    kind = "ark"

    def __init__(
        self,
        name: str,
        settings: ArkEngineSettings,
        models: frozenset[str],
        *,
        api_key: str,
        net_policy: netguard.NetPolicy | None = None,
    ) -> None:
        super().__init__(name, settings, models, api_key=api_key, net_policy=net_policy)
        self.ark = settings
        self.model_ids = ark_model_ids(settings)

    def request_body(self, job: EngineJob) -> dict[str, Any]:
        """The Ark request for ``job`` (public: the mapping is the contract tests check)."""
        inp = job.input
        plan = job.plan
        body: dict[str, Any] = {
            "model": self.model_ids[job.model],
            "prompt": inp.get("prompt") or "",
            "size": f"{plan.width}x{plan.height}",
            "seed": job.seed % _SEED_MODULUS,
            "watermark": self.ark.watermark,
            "response_format": self.ark.response_format,
        }
        if job.images:
            urls = [_data_url(image) for image in job.images]
            body["image"] = urls[0] if len(urls) == 1 else urls
        if plan.max_images > 1:
            body["sequential_image_generation"] = "auto"
            body["sequential_image_generation_options"] = {"max_images": plan.max_images}
        if "guidance_scale" in inp and inp["guidance_scale"] is not None:
            body["guidance_scale"] = inp["guidance_scale"]
        if job.model in _OUTPUT_FORMAT_MODELS:
            body["output_format"] = plan.format
        return body

    async def relay(
        self,
        job: EngineJob,
        progress: ProgressFn,
        cancel: threading.Event,
        note: NoteFn | None,
    ) -> list[Artifact]:
        body = (
            await asyncio.to_thread(self.request_body, job)
            if job.images
            else self.request_body(job)
        )
        progress(5)
        answer = await self.send(
            "POST",
            f"{self.base_url}/api/v3/images/generations",
            json=body,
            budget=self.budget(),
            what="images/generations",
        )
        if answer.status >= 400:
            raise UpstreamRefused(
                f"upstream {self.name} refused the task: {_ark_error(answer.body)}"
            )
        progress(70)
        blobs = await self._images(_parse(self.name, answer.body))
        progress(90)
        return await self.artifacts(job, blobs)

    async def _images(self, data: list[Any]) -> list[bytes]:
        """The bytes of each usable image of Ark's ``data``; items with an ``error`` skipped."""
        wanted: list[tuple[str, str]] = []
        errors: list[str] = []
        for item in data:
            if not isinstance(item, dict):
                continue
            if item.get("error"):
                errors.append(_describe(item["error"]))
                continue
            if isinstance(item.get("b64_json"), str):
                wanted.append(("b64", item["b64_json"]))
            elif isinstance(item.get("url"), str):
                wanted.append(("url", item["url"]))
        if not wanted:
            why = f": {'; '.join(errors)}" if errors else ""
            if errors and all("Sensitive" in e for e in errors):
                raise UpstreamRefused(f"upstream {self.name} returned no image{why}")
            raise TaskFailure(f"upstream {self.name} returned no image{why}")

        async def one(kind: str, value: str) -> bytes:
            if kind == "b64":
                try:
                    return base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    raise TaskFailure(f"upstream {self.name}: b64_json is not base64") from None
            return await self.download(value, own_origin=value.startswith(self.base_url + "/"))

        return list(await asyncio.gather(*(one(k, v) for k, v in wanted)))


def _parse(engine: str, raw: bytes) -> list[Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TaskFailure(
            f"upstream {engine} answered with a body that is not JSON: {quote(raw)}"
        ) from None
    if not isinstance(body, dict):
        raise TaskFailure(f"upstream {engine} answered JSON that is not an object: {quote(raw)}")
    if body.get("error"):
        raise TaskFailure(f"upstream {engine} answered an error: {_describe(body['error'])}")
    data = body.get("data")
    if not isinstance(data, list) or not data:
        raise TaskFailure(f"upstream {engine} answered without data: {quote(raw)}")
    return data


def _ark_error(raw: bytes) -> str:
    """Ark's ``{"error": {"code", "message"}}`` as ``code: message``, else the body quoted."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return quote(raw)
    if isinstance(body, dict) and body.get("error"):
        return _describe(body["error"])
    return quote(raw)


def _describe(error: Any) -> str:
    if isinstance(error, dict):
        code = str(error.get("code") or "").strip()
        message = str(error.get("message") or "").strip()
        return f"{code}: {message}" if code and message else (code or message or "error")
    return str(error)[:300]


def _data_url(image: Image.Image) -> str:
    """An input image as a ``data:`` URL: JPEG unless it has transparency (PNG keeps it)."""
    buf = io.BytesIO()
    if image.mode == "RGBA":
        image.save(buf, "PNG", compress_level=1)
        kind = "png"
    else:
        image.convert("RGB").save(buf, "JPEG", quality=95)
        kind = "jpeg"
    return f"data:image/{kind};base64,{base64.b64encode(buf.getvalue()).decode()}"
