"""Where a benchmark's figures go: one JSON file with the command and the machine beside them."""

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any


def write_results(out: Path, machine: dict[str, Any], **figures: Any) -> None:
    """Write `figures` to `out`, with how they were made: the command, when, on what machine."""
    document = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        **figures,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")
