"""Files only the server's user may read: the data directory is 0700, its files 0600.

The database holds webhook HMAC keys and key hashes, the server secret signs download links:
none of it is for other users of the machine, whatever the umask the server was started with.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) readable by this user alone; tighten it if it
    exists. Parents that already exist are left as they are (they may be shared, like /var)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty if absent, mode 0600 whatever the umask; tighten it if it exists.

    An existing file is never opened: closing any descriptor of a SQLite database drops every
    POSIX lock this process holds on it, including those of its open connections.
    """
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        if path.stat().st_mode & 0o777 != FILE_MODE:
            os.chmod(path, FILE_MODE)
    else:
        try:
            os.fchmod(fd, FILE_MODE)  # the umask may have taken bits off: set exactly 0600
        finally:
            os.close(fd)
    return path
