"""Command line: ``python -m equifast {demo,check,study,bench}`` (also the ``equifast`` script).

This module only parses and dispatches. ``COMMANDS`` maps each subcommand to the module that
implements it; that module is imported only when its subcommand runs (``equifast --help`` imports
none of them) and exposes ``add_arguments(parser)`` and ``run(args) -> int``, except ``bench``,
whose module gets the raw arguments (``equifast.benchmark.main(argv)``).

* ``demo``  (``equifast.demo``)      — the paper's experiment: Figure 3 network on rotated digits.
* ``check`` (``equifast.check``)     — every available backend against the reference; exit 1 on a mismatch.
* ``study`` (``equifast.study``)     — the paper's study: equivariance vs data augmentation.
* ``bench`` (``equifast.benchmark``) — the benchmark suite; arguments are passed through.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple, Optional, Sequence

DESCRIPTION = "equifast: fast equivariant CNNs (equivarification, lift_conv, group_conv)."


class Command(NamedTuple):
    module: str
    help: str
    description: str = ""
    passthrough: bool = False   # the module's main(argv) parses the arguments itself


COMMANDS = {
    "demo": Command("equifast.demo", "the paper's experiment: Figure 3 network on rotated digits",
                    "Train the paper's Figure 3 network on upright digits and test it on digits rotated by "
                    "random multiples of 90 degrees (Bao et al., Section 5)."),
    "check": Command("equifast.check", "verify every available backend against the reference",
                     "Compare every available backend with the reference backend on a few shapes, groups and "
                     "frames, forward and backward; print a table and exit nonzero on a mismatch."),
    "study": Command("equifast.study", "the paper's study: equivariance vs data augmentation, scarce data, "
                     "larger groups",
                     "Equivarified networks vs data augmentation, with scarce training data and larger "
                     "(interpolated) groups."),
    "bench": Command("equifast.benchmark", "benchmark suite (equifast.benchmark); `equifast bench --help` for "
                     "its options", passthrough=True),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: the subcommands and their one-line help (their options live in their modules)."""
    parser = argparse.ArgumentParser(prog="equifast", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return parser


def _import(name: str, command: Command):
    """The command's module, or None after saying on stderr why it cannot be imported."""
    try:
        return importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        if exc.name != command.module:   # the module exists but needs something missing: a real error
            raise
        print(f"equifast {name}: the module {command.module} is not installed in this checkout; "
              "nothing to run.", file=sys.stderr)
    except ImportError as exc:
        print(f"equifast {name}: could not import {command.module}: {exc}", file=sys.stderr)
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)   # --help, or an error naming the valid subcommands (exits)
        return 2
    name, rest = argv[0], argv[1:]
    command = COMMANDS[name]
    module = _import(name, command)
    if module is None:
        return 2
    if command.passthrough:
        rc = module.main(rest)
    else:
        parser = argparse.ArgumentParser(prog=f"equifast {name}", description=command.description or None)
        module.add_arguments(parser)
        rc = module.run(parser.parse_args(rest))
    return 0 if rc is None else int(rc)


if __name__ == "__main__":
    sys.exit(main())
