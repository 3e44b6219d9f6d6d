"""What two preparations of the same data must share: every prepared file, byte for byte, less the timings."""

import json
import pathlib

# What may differ between two preparations of the same data: timings, the worker count and where the cache is.
TIMINGS = {"report.json": ("seconds", "docs_per_second", "workers"), "manifest.json": ("seconds",)}


def contents(directory: pathlib.Path) -> dict[str, object]:
    """Every file of a prepared directory: bytes, or for the two JSON files their content less the timings (and
    the cache directory's name)."""
    out = {}
    for path in sorted(directory.iterdir()):
        if path.name in TIMINGS:
            out[path.name] = {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMINGS[path.name]}
        else:
            out[path.name] = path.read_bytes()
    del out["manifest.json"]["data"]["cache_dir"]
    return out
