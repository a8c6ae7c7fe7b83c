"""flowpin's control plane: daemon, CLI, tunnel registry, flow table, sweeper."""

import functools
from importlib import metadata


@functools.cache
def version() -> str:
    """The installed flowpin's version ("unknown" in a source tree never installed): what
    `flowpin --version`, `flowpin status` and `flowpin_build_info` say. Read once: the
    running code is the version it was when it started (and every scrape read the
    package metadata from disk again, a millisecond)."""
    try:
        return metadata.version("flowpin")
    except metadata.PackageNotFoundError:
        return "unknown"
