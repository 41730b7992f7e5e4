"""The kie jobs API through a real server on loopback: create → poll → download, per model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import FileServer, LiveServer
from images_util import image_size, png_bytes

# (model, input, expected pixel size, images expected)
T2I_CASES: list[tuple[str, dict[str, Any], tuple[int, int], int]] = [
    ("bytedance/seedream", {}, (1024, 1024), 1),
    ("bytedance/seedream", {"image_size": "portrait_16_9"}, (576, 1024), 1),
    ("bytedance/seedream", {"image_size": "square"}, (512, 512), 1),
    ("bytedance/seedream-v4-text-to-image", {}, (1024, 1024), 1),
    (
        "bytedance/seedream-v4-text-to-image",
        {"image_size": "landscape_16_9", "image_resolution": "2K", "max_images": 2},
        (2560, 1440),
        2,
    ),
    ("bytedance/seedream-v4-text-to-image", {"image_size": "portrait_3_2"}, (832, 1248), 1),
    ("seedream/4.5-text-to-image", {"aspect_ratio": "21:9"}, (3136, 1344), 1),
    ("seedream/4.5-text-to-image", {"aspect_ratio": "3:4", "quality": "high"}, (3520, 4704), 1),
    ("seedream/5-lite-text-to-image", {"aspect_ratio": "16:9", "quality": "high"}, (4096, 2304), 1),
    ("seedream/5-lite-text-to-image", {"output_format": "jpeg"}, (2048, 2048), 1),
    ("seedream/5-pro-text-to-image", {"aspect_ratio": "4:3"}, (1152, 864), 1),
    ("seedream/5-pro-text-to-image", {"aspect_ratio": "9:16", "quality": "high"}, (1600, 2848), 1),
    ("seedream/5-flash-text-to-image", {}, (1024, 1024), 1),
    ("seedream/5-flash-text-to-image", {"size": "1.5K", "aspect_ratio": "16:9"}, (1920, 1088), 1),
    ("seedream/5-flash-text-to-image", {"size": "2K", "aspect_ratio": "2:3"}, (1664, 2496), 1),
]

EDIT_CASES: list[tuple[str, dict[str, Any], tuple[int, int], int]] = [
    ("bytedance/seedream-v4-edit", {"image_resolution": "1K"}, (1024, 1024), 1),
    ("seedream/4.5-edit", {"aspect_ratio": "3:2"}, (2496, 1664), 1),
    ("seedream/5-lite-image-to-image", {"aspect_ratio": "1:1"}, (2048, 2048), 1),
    ("seedream/5-pro-image-to-image", {"aspect_ratio": "16:9"}, (1280, 720), 1),
    ("seedream/5-flash-image-to-image", {"size": "1K", "aspect_ratio": "3:4"}, (864, 1152), 1),
]


def _download(server: LiveServer, url: str) -> bytes:
    assert url.startswith(server.url + "/files/results/")
    response = server.client.get(url)
    assert response.status_code == 200
    return response.content


def _result_urls(data: dict[str, Any]) -> list[str]:
    urls = json.loads(data["resultJson"])["resultUrls"]
    assert isinstance(urls, list)
    return urls


@pytest.mark.parametrize(("model", "extra", "size", "count"), T2I_CASES)
def test_text_to_image_runs_to_success_at_the_contract_size(
    server: LiveServer, model: str, extra: dict[str, Any], size: tuple[int, int], count: int
) -> None:
    key, _ = server.add_key(credits=100)
    created = server.create(key, {"model": model, "input": {"prompt": "a red fox", **extra}})
    assert created["code"] == 200, created
    task_id = created["data"]["taskId"]
    assert created["data"] == {"taskId": task_id, "recordId": task_id}
    assert len(task_id) == 32 and all(c in "0123456789abcdef" for c in task_id)

    data = server.wait(key, task_id)
    assert data["state"] == "success", data
    assert data["failCode"] is None and data["failMsg"] is None
    assert data["progress"] == 100 and data["queuePosition"] is None
    assert isinstance(data["costTime"], int) and data["completeTime"] >= data["createTime"]
    urls = _result_urls(data)
    assert len(urls) == count
    for url in urls:
        assert image_size(_download(server, url)) == size
    assert data["creditsConsumed"] > 0


@pytest.mark.parametrize(("model", "extra", "size", "count"), EDIT_CASES)
def test_edit_models_fetch_inputs_and_render_at_the_contract_size(
    server: LiveServer,
    files: FileServer,
    model: str,
    extra: dict[str, Any],
    size: tuple[int, int],
    count: int,
) -> None:
    key, _ = server.add_key(credits=100)
    urls = [files.add("/a.png", png_bytes(300, 200)), files.add("/b.png", png_bytes(120, 240))]
    body = {"model": model, "input": {"prompt": "put them together", "image_urls": urls, **extra}}
    created = server.create(key, body)
    assert created["code"] == 200, created
    data = server.wait(key, created["data"]["taskId"])
    assert data["state"] == "success", data
    results = _result_urls(data)
    assert len(results) == count
    assert image_size(_download(server, results[0])) == size


@pytest.mark.parametrize(
    ("model", "extra", "size"),
    [
        ("seedream/5-pro-layer-decomposition", {}, (900, 600)),
        ("seedream/5-pro-layer-decomposition", {"size": "1K"}, (1024, 683)),
        (
            "seedream/5-flash-layer-decomposition",
            {"size": "1.5K", "prompt": "the cat"},
            (1536, 1024),
        ),
    ],
)
def test_layer_decomposition_returns_base_and_layers(
    server: LiveServer, files: FileServer, model: str, extra: dict[str, Any], size: tuple[int, int]
) -> None:
    key, _ = server.add_key(credits=100)
    url = files.add("/photo.png", png_bytes(900, 600))
    created = server.create(key, {"model": model, "input": {"image_url": url, **extra}})
    assert created["code"] == 200, created
    data = server.wait(key, created["data"]["taskId"])
    assert data["state"] == "success", data
    results = _result_urls(data)
    assert len(results) >= 2
    assert results[0].endswith(".jpg")  # base image: output_format defaults to jpeg
    assert all(u.endswith(".png") for u in results[1:])  # layers are always PNG
    for url in results:
        assert image_size(_download(server, url)) == size


def test_record_info_has_kie_field_forms(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    body = {
        "model": "seedream/5-lite-text-to-image",
        "callBackUrl": "http://127.0.0.1:9/hook",
        "input": {"prompt": "mountains", "aspect_ratio": "16:9", "nsfw_checker": False},
    }
    created = server.create(key, body)
    task_id = created["data"]["taskId"]
    data = server.wait(key, task_id)
    assert list(data)[:12] == [
        "taskId",
        "model",
        "state",
        "param",
        "resultJson",
        "failCode",
        "failMsg",
        "costTime",
        "completeTime",
        "createTime",
        "updateTime",
        "creditsConsumed",
    ]
    # kie's double encoding: param is a string whose "input" is itself a JSON string.
    param = json.loads(data["param"])
    assert list(param) == ["input", "callBackUrl", "model"]
    assert isinstance(param["input"], str)
    assert json.loads(param["input"]) == body["input"]
    assert param["callBackUrl"] == "http://127.0.0.1:9/hook"
    assert isinstance(data["resultJson"], str)
    assert data["creditsConsumed"] == 5.5


def test_param_omits_callback_url_when_not_given(server: LiveServer) -> None:
    key, _ = server.add_key(credits=10)
    created = server.create(key, {"model": "bytedance/seedream", "input": {"prompt": "x"}})
    data = server.wait(key, created["data"]["taskId"])
    assert list(json.loads(data["param"])) == ["input", "model"]


def test_same_seed_gives_the_same_image(server: LiveServer) -> None:
    key, _ = server.add_key(credits=100)
    body = {
        "model": "bytedance/seedream",
        "input": {"prompt": "dice", "seed": 42, "image_size": "square"},
    }
    first = server.wait(key, server.create(key, body)["data"]["taskId"])
    second = server.wait(key, server.create(key, body)["data"]["taskId"])
    body["input"]["seed"] = 43
    third = server.wait(key, server.create(key, body)["data"]["taskId"])
    a, b, c = (_download(server, _result_urls(d)[0]) for d in (first, second, third))
    assert a == b
    assert a != c


def test_credits_charged_on_success(server: LiveServer) -> None:
    key, _ = server.add_key(credits=20)
    assert server.client.get(
        "/api/v1/chat/credit", headers={"Authorization": f"Bearer {key}"}
    ).json() == {
        "code": 200,
        "msg": "success",
        "data": 20,
    }
    body = {
        "model": "bytedance/seedream-v4-text-to-image",
        "input": {"prompt": "x", "max_images": 3},
    }
    created = server.create(key, body)
    data = server.wait(key, created["data"]["taskId"])
    assert data["creditsConsumed"] == 15
    balance = server.client.get(
        "/api/v1/chat/credit", headers={"Authorization": f"Bearer {key}"}
    ).json()["data"]
    assert balance == 5


def test_models_endpoint_lists_every_model_with_a_schema(server: LiveServer) -> None:
    body = server.client.get("/api/v1/models").json()
    assert body["code"] == 200
    ids = [m["id"] for m in body["data"]]
    assert len(ids) == 13
    for model in body["data"]:
        assert model["inputSchema"]["type"] == "object"
        assert model["served"] is True
    openapi = server.client.get("/openapi.json").json()
    assert "/api/v1/jobs/createTask" in openapi["paths"]
    assert "/api/v1/jobs/recordInfo" in openapi["paths"]
