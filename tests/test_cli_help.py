"""``bankgate --help`` everywhere, and ``bankgate --version``.

Every command and command group of the ``bankgate`` parser says what it does
(a description) and shows how (an ``examples:`` block of ``bankgate …`` lines),
and every example still parses: a renamed option breaks this test, not the
operator's copy-and-paste at 3 a.m.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shlex

import pytest

import bankgate
from bankgate.app.cli import build_parser, main


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


PARSERS = list(_walk(build_parser(), ("bankgate",)))


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    lines = (parser.epilog or "").splitlines()
    if "examples:" not in [line.strip() for line in lines]:
        return []
    start = [line.strip() for line in lines].index("examples:")
    return [line.strip() for line in lines[start + 1:] if line.strip().startswith("bankgate ")]


def test_the_walk_finds_every_command():
    names = {" ".join(p) for p, _ in PARSERS}
    # a sample from each module that registers commands
    for expected in ("bankgate config check", "bankgate status", "bankgate backup",
                     "bankgate invoice void", "bankgate recon resolve",
                     "bankgate withholding simulate-host", "bankgate simulate load"):
        assert expected in names
    assert len(PARSERS) > 40


@pytest.mark.parametrize("path,parser", PARSERS, ids=[" ".join(p) for p, _ in PARSERS])
def test_every_command_has_a_description_and_examples(path, parser):
    assert parser.description and parser.description.strip(), f"{' '.join(path)}: no description"
    assert _examples(parser), f"{' '.join(path)}: no 'examples:' line starting with 'bankgate '"
    # printed as written (RawDescriptionHelpFormatter): so lines must fit a terminal
    assert issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    for line in parser.description.splitlines():
        assert len(line) <= 80, f"{' '.join(path)}: description line over 80: {line!r}"


def _argv(example: str) -> list[str]:
    """The arguments of an example line, up to a pipe, ``&&`` or a comment."""
    lexer = shlex.shlex(example, posix=True, punctuation_chars="|&")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    words = []
    for w in lexer:
        if w in ("|", "&&", "||"):
            break
        words.append(w)
    assert words[0] == "bankgate"
    return words[1:]


EXAMPLES = [(" ".join(p), e) for p, parser in PARSERS for e in _examples(parser)]


@pytest.mark.parametrize("where,example", EXAMPLES, ids=[e for _, e in EXAMPLES])
def test_every_example_parses(where, example, capsys):
    try:
        args = build_parser().parse_args(_argv(example))
    except SystemExit as e:  # --help / --version print and exit 0; a bad example exits 2
        assert e.code == 0, f"{where}: example does not parse: {example}\n{capsys.readouterr().err}"
    else:
        assert callable(args.func)


def test_help_prints_the_examples_as_written(capsys):
    with pytest.raises(SystemExit) as e:
        main(["status", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  bankgate -c /etc/bankgate/bankgate.toml status\n" in out
    assert "Exit status 0, or 1 when the database cannot be read." in out


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bankgate {bankgate.__version__} (Python ")
    assert "Twisted " in out and "SQLAlchemy " in out


def test_version_agrees_with_the_package_metadata():
    """``bankgate.__version__`` and setup.cfg's version are written twice: they must agree."""
    try:
        installed = importlib.metadata.version("bankgate")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a bare checkout
        pytest.skip("bankgate is not installed: no package metadata to compare")
    assert installed == bankgate.__version__
