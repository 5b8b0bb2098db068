"""The command line as a user meets it: help text everywhere, one meaning per flag, one-line refusals."""

from __future__ import annotations

import argparse

import pytest

from densegraph.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = _subparsers(build_parser())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_positional_and_flag_has_help(name: str) -> None:
    missing = [
        "/".join(a.option_strings) or a.dest
        for a in COMMANDS[name]._actions
        if not isinstance(a, argparse._HelpAction) and not a.help
    ]
    assert not missing, f"densegraph {name}: no help for {missing}"
    assert COMMANDS[name].description, f"densegraph {name} --help says nothing about the command"


def _flags(name: str) -> dict[str, argparse.Action]:
    return {flag: a for a in COMMANDS[name]._actions for flag in a.option_strings}


def test_batch_flags_say_one_thing_each() -> None:
    # one batch size, a list of them, or the range an engine serves: three spellings, never a bare --batch
    for name in COMMANDS:
        assert "--batch" not in _flags(name), name
    assert {"train", "eval"} <= {n for n in COMMANDS if "--batch-size" in _flags(n)}
    assert {n for n in COMMANDS if "--batch-sizes" in _flags(n)} == {"bench"}
    assert {n for n in COMMANDS if "--batch-range" in _flags(n)} == {"build", "engine"}
    args = build_parser().parse_args(["bench", "m.onnx", "--batch-sizes", "1,8"])
    assert args.batch_sizes == [1, 8]
    args = build_parser().parse_args(["build", "s.yaml", "--batch-range", "1:4:16"])
    assert args.batch_range == (1, 4, 16)


def test_tensorrt_flags_form_their_own_group() -> None:
    parser = COMMANDS["build"]
    (group,) = (g for g in parser._action_groups if g.title and g.title.startswith("TensorRT"))
    inside = {flag for a in group._group_actions for flag in a.option_strings}
    assert inside == {
        "--batch-range",
        "--workspace",
        "--dla",
        "--timing-cache",
        "--hardware-compat",
        "--version-compat",
    }
    assert "TensorRT (with --target tensorrt):" in parser.format_help()


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (
            ["bench", "m.onnx", "--batch", "1,8"],
            "--batch is now --batch-range MIN:OPT:MAX on build and engine",
        ),
        (["build", "s.yaml", "--batch", "1:8:32"], "--batch-sizes 1,8 on bench"),
        (["build", "s.yaml", "--wei", "w.pt"], "`densegraph --help` lists the options"),
    ],
)
def test_an_unknown_flag_is_one_line_with_a_hint(
    argv: list[str], hint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("densegraph: error: unrecognized arguments: ")
    assert hint in err


def test_flags_are_not_abbreviated(capsys: pytest.CaptureFixture[str]) -> None:
    # `--prec fp16` would silently mean --precision today and something else once a --prec... flag is added
    with pytest.raises(SystemExit):
        main(["build", "s.yaml", "--prec", "fp16"])
    assert "unrecognized arguments: --prec fp16" in capsys.readouterr().err


def test_every_command_is_a_top_level_library_function() -> None:
    import densegraph

    for name in ("build", "train", "evaluate", "predict", "bench", "heatmap", "import_weights"):
        assert callable(getattr(densegraph, name)), name
    import densegraph.evaluation
    import densegraph.prediction
    import densegraph.training  # noqa: F401  (importing the modules must not shadow the functions)

    assert all(callable(getattr(densegraph, n)) for n in ("train", "evaluate", "predict"))
