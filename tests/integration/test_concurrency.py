"""100 simultaneous createTask calls against a balance that covers 10: exactly 10 accepted."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx

from conftest import make_settings, serve_in_thread


def test_balance_never_overspent_under_concurrency(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, sandbox_step_seconds=0.2)
    with serve_in_thread(settings) as server:
        key, key_id = server.add_key(credits=65)  # ten 4.5 tasks at 6.5
        body = {"model": "seedream/4.5-text-to-image", "input": {"prompt": "race"}}

        async def fire() -> list[int]:
            limits = httpx.Limits(max_connections=100)
            async with httpx.AsyncClient(
                base_url=server.url, trust_env=False, limits=limits, timeout=30
            ) as client:

                async def one() -> int:
                    response = await client.post(
                        "/api/v1/jobs/createTask",
                        json=body,
                        headers={"Authorization": f"Bearer {key}"},
                    )
                    return int(response.json()["code"])

                return await asyncio.gather(*(one() for _ in range(100)))

        codes = Counter(asyncio.run(fire()))
        assert codes == {200: 10, 402: 90}
        stored = server.store_call(lambda store: store.get_key(key_id))
        assert stored.balance == 0
        assert stored.balance + stored.held <= 65
