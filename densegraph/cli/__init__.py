"""The ``densegraph`` command line.

Each subcommand's work lives in the stage module that owns it; this package only parses arguments, imports the
stage lazily (``validate``, ``summary`` and ``graph`` never import torch, onnx or onnxruntime) and turns a
:class:`~densegraph.errors.DensegraphError` into one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import DensegraphError
from ._args import EXIT_USER_ERROR
from ._parser import build_parser

__all__ = ["EXIT_USER_ERROR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        return int(func(args) or 0)
    except DensegraphError as exc:
        if args.debug:
            raise
        print(exc.format(), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception:
        print(
            "densegraph: internal error (a bug in densegraph, not in your input); please report it with the "
            "traceback below",
            file=sys.stderr,
        )
        raise
