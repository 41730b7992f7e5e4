"""A self-signed certificate for TLS tests on loopback, made with the openssl command (part of
the machine's base image: Debian's openssl package)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    """A certificate for the DNS name ``name`` and its key: (cert.pem, key)."""
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=10,
    )  # fmt: skip
    return cert, key
