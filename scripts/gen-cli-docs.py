#!/usr/bin/env python3
"""Make the man page and the shell completions of `flowpin` from its argument parser.

    python scripts/gen-cli-docs.py           # write docs/man/flowpin.8, docs/man/flowpin.bash
    python scripts/gen-cli-docs.py --check   # exit 1 if they differ from the parser

They describe the gateway's command (the product's subcommands only: the lab and the
benchmarks are not installed there). Generated, never edited by hand: the unit test
tests/unit/test_cli_docs.py fails when the parser changed and they were not remade.
Needs python3-argparse-manpage and python3-shtab (development packages).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import shtab
from build_manpages.manpage import Manpage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controlplane.cli import parser  # noqa: E402

MAN = ROOT / "docs/man/flowpin.8"
BASH = ROOT / "docs/man/flowpin.bash"

EXTRA = r""".SH FILES
.TP
\fI/etc/flowpin/flowpin.toml\fR
the configuration (every key in /usr/share/doc/flowpin/flowpin.example.toml)
.TP
\fI/run/flowpin/INSTANCE.sock\fR
the control socket of the daemon of instance INSTANCE
.TP
\fI/sys/fs/bpf/flowpin/INSTANCE/\fR
the data path's pinned maps: flows outlive the daemon there
.SH EXIT STATUS
0 on success; 1 with one line "flowpin: error: ..." on an expected failure (no daemon
running, a bad filter, a broken configuration); 130 when interrupted.
.SH SEE ALSO
.BR swanctl (8),
.BR tc (8),
.BR journalctl (1);
/usr/share/doc/flowpin/ (design, operations, install).
"""


def man_page() -> str:
    text = str(Manpage(parser(with_rig=False)))
    lines = text.splitlines()
    # section 8: an administrator's command, installed in /usr/sbin
    lines[0] = '.TH FLOWPIN 8 "" "flowpin" "System Administration"'
    lines[2] = r"flowpin \- persistent IPsec tunneled flows for Linux gateways"
    return "\n".join(lines).rstrip() + "\n" + EXTRA


def bash_completion() -> str:
    return shtab.complete(parser(with_rig=False), shell="bash")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare instead of writing")
    a = ap.parse_args(argv)
    stale = []
    for path, text in ((MAN, man_page()), (BASH, bash_completion())):
        if a.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print(f"stale: {', '.join(stale)}; run: python scripts/gen-cli-docs.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
