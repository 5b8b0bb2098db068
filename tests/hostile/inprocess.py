"""``run_main``: :func:`hostile.run_cli` without a new interpreter, for cases that would spend most of their time
importing torch again. The same ``main``; what a subprocess would print to stderr is collected the same way:
the CLI's own lines, argparse's exit, and every warning (a subprocess shows each as lines of its own)."""

from __future__ import annotations

import contextlib
import io
import warnings

from hostile import Refusal

from densegraph.cli import main


def run_main(*args: object) -> Refusal:
    """``densegraph ARGS`` in this process: its exit status, stdout, and stderr with any warning appended."""
    out, err = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exit_:  # argparse's refusals
                code = exit_.code if isinstance(exit_.code, int) else 1
    shown = "".join(f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}\n" for w in caught)
    return Refusal(code, out.getvalue(), err.getvalue() + shown)
