"""flowpin's control plane: daemon, CLI, tunnel registry, flow table, sweeper."""

from importlib import metadata


def version() -> str:
    """The installed flowpin's version ("unknown" in a source tree never installed): what
    `flowpin --version`, `flowpin status` and `flowpin_build_info` say."""
    try:
        return metadata.version("flowpin")
    except metadata.PackageNotFoundError:
        return "unknown"
