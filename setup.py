"""What a build of flowpin holds, decided when it is built.

The product (``controlplane``, ``vici_glue``, ``flowpin_bpf``) always. The test rig (``lab``,
``bench``) and the ``flowpin`` subcommands it adds (``lab``, ``demo``, ``bench``) too, unless
``FLOWPIN_BUILD=gateway``: the Debian package (debian/rules sets it) installs on a gateway
only what runs there. ``make setup``'s editable install is the default, everything.
Everything else about the build is in pyproject.toml.
"""

import os

from setuptools import setup

PRODUCT = ["controlplane", "vici_glue", "flowpin_bpf"]
RIG = ["lab", "bench"]
RIG_COMMANDS = ["lab = lab.cli:add_lab", "demo = lab.cli:add_demo",
                "bench = bench.cli:add_bench"]

build = os.environ.get("FLOWPIN_BUILD", "dev")
if build not in ("dev", "gateway"):
    raise SystemExit(f"FLOWPIN_BUILD={build!r}: use 'dev' (default) or 'gateway'")
gateway = build == "gateway"
setup(
    packages=PRODUCT if gateway else PRODUCT + RIG,
    # The product's CLI finds the rig's subcommands by this group and never imports them.
    entry_points={"console_scripts": ["flowpin = controlplane.cli:main"],
                  **({} if gateway else {"flowpin.subcommands": RIG_COMMANDS})},
)
