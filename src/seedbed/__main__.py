from __future__ import annotations

from seedbed.cli import main

main()
