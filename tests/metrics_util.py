"""Reading a live server's /metrics in tests: every sample by name and labels."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from conftest import LiveServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: LiveServer) -> Samples:
    """Every sample of /metrics, by (name, sorted labels)."""
    response = server.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """One sample's value; 0 when the series does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def requests_to(samples: Samples, route: str) -> float:
    """HTTP requests answered on ``route`` (a path template), whatever their status."""
    return sum(
        count
        for (name, labels), count in samples.items()
        if name == "seedbed_http_requests_total" and dict(labels).get("route") == route
    )


def wait_for_value(
    server: LiveServer, name: str, at_least: float, timeout: float = 10.0, **labels: str
) -> Samples:
    """Scrape until ``name{labels}`` reaches ``at_least`` (counters move when work ends)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(server)
        if value(samples, name, **labels) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
