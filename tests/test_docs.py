"""The documentation's shell commands, run against a fresh gateway, so the docs cannot drift.

What is collected, from ``README.rst`` and ``docs/*.rst`` (not ``docs/specs/``, which
holds the banks' byte layouts, not commands):

- every ``.. code-block::`` of language ``console``, ``sh``, ``shell`` or ``bash``, at
  any indentation;
- a literal block (a paragraph ending in ``::``) only when its first line starts with
  ``$ ``: that is a shell session; any other literal block is a picture, a file or a
  log and is left alone.

How a block reads:

- ``console`` (and a ``$ `` literal block): a line starting with ``$ `` is a command,
  the lines after it up to the next ``$ `` are its output as shown;
- ``sh``, ``shell``, ``bash``: every line is a command, except blank lines and ``#``
  comments; nothing is output.

A line ending in ``\\`` continues on the next line, as in the shell.

Markers: rst comments directly before the block (blank lines and other markers may sit
between).  They do not show in the rendered page:

- ``.. illustrative: REASON``: the block is not run.  REASON must say why (a
  placeholder to fill in, a root-only command, a second gateway, another machine ...).
  Use it only when the block cannot run against the demo; prefer making it runnable.
- ``.. expect-exit: N``: the block's *last* command exits with N (the others with 0),
  for a block that shows a failure on purpose.
- ``.. fresh-gateway``: stop the gateway and start a fresh one (new folder, new
  database) before this block, for a text that says "on a fresh ``make run``".

How it runs.  Each file's blocks run in document order (a later command may use what
an earlier one did: a payment, then its invoice) in a workspace of its own, with a
gateway of its own: ``twistd bankgate`` in a subprocess, on a configuration equal to
the embedded demo (``bankgate.app.config.default_config``: 1000 demo customers, the
demo banks, invoices on demo-fixed, withholding and a simulated debit host on
demo-delim) except for its ports, which are free ports, so that a ``make run`` on the
machine never collides with it, and its schedule: no cut-off at 23:30 and no nightly
reconciliation, so that the result does not depend on the hour it runs
(:data:`DEMO_CONFIG`; a test checks it against the demo).  The workspace is what
the docs call "the same folder" as ``make run``: the gateway's data is in ``var/``
under it, and ``.venv`` in it is a link to the virtual environment running the tests,
so ``.venv/bin/bankgate`` works as written (``docs`` in it is a link to the
checkout's, for the example files the docs name); ``PATH`` starts with that ``bin``
(``bankgate``, ``twistd`` bare), and ``PYTHONPATH`` is the checkout, so the commands
run this source tree, not the copy installed in ``.venv`` (as of the last ``make``;
``pytest`` alone does not refresh it).

The docs are written for the reader's machine; these words are mapped to the test's,
in the commands and in the output shown (:data:`SUBSTITUTIONS`):

- ``--demo`` -> ``--config bankgate.toml``: the workspace's demo-equivalent;
- ``/etc/bankgate/bankgate.toml`` -> ``bankgate.toml``: the same;
- ``sudo -u bankgate`` is dropped: the test owns the files;
- ``/mnt/backup/bankgate`` -> ``backup``: a folder in the workspace.

``$BANKGATE_CONFIG`` names the same file, for commands without ``--config``.

What is checked: every command exits 0 (or the ``expect-exit``), prints no Python
traceback, and for each line of output a console block shows, the line's first word
(digits may differ: dates, serials, amounts) appears in the command's real output.  The
figures themselves are not compared: they depend on the day.  A failure names
``file:line`` of the command, its exit status and the tail of its output, and the
gateway's log tail.

Limits: the gateway's trade date is today in Asia/Shanghai; a run across midnight
there may see the date change between two commands.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bankgate.app.config import DEMO_MAC_KEY, default_config, parse_config
from bankgate.devtools.console_browser import CONFIG, KCV_SM4
from bankgate.devtools.gateway import GatewayProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
#: the virtual environment running the tests: ``.venv/bin/...`` in the docs is its bin
VENV = Path(sys.prefix)

SHELL_LANGS = {"console", "sh", "shell", "bash"}
#: at least this many blocks really run: the collector cannot quietly find nothing
MIN_RUNNABLE = 15
DEMO_KCV = "08D7B4"  # the check value of DEMO_MAC_KEY, the specs' test key
START_TIMEOUT = 30.0
BLOCK_TIMEOUT = 90.0

#: (pattern, replacement): the reader's machine -> the test's workspace
SUBSTITUTIONS = [
    (re.compile(r"(?<!\S)--demo(?!\S)"), "--config bankgate.toml"),
    (re.compile(r"/etc/bankgate/bankgate\.toml"), "bankgate.toml"),
    (re.compile(r"(?<!\S)sudo -u bankgate\s+"), ""),
    (re.compile(r"/mnt/backup/bankgate"), "backup"),
]

DIRECTIVE = re.compile(r"^(?P<indent>\s*)\.\. code-block::\s*(?P<lang>\S+)\s*$")
MARKER = re.compile(r"^\s*\.\. (?P<name>illustrative|expect-exit|fresh-gateway)\b(?P<rest>.*)$")
OPTION = re.compile(r"^\s*:[\w-]+:")


# -- collecting ----------------------------------------------------------------------


@dataclass
class Command:
    line: int  # 1-based line of the command in its file
    text: str  # as in the doc, continuation lines joined with their backslash-newline
    output: list[str] = field(default_factory=list)  # the output the doc shows


@dataclass
class Block:
    path: str
    line: int  # 1-based line of the directive (or of the ``::`` paragraph)
    lang: str
    commands: list[Command]
    illustrative: str | None = None  # the reason, when marked
    expect_exit: int = 0
    fresh: bool = False
    marker_lines: list[int] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files(root: Path = ROOT) -> list[Path]:
    return [root / "README.rst", *sorted((root / "docs").glob("*.rst"))]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _body(lines: list[str], start: int, indent: int) -> tuple[list[tuple[int, str]], int]:
    """The block's lines after ``start`` that are blank or indented deeper than ``indent``,
    dedented, with their indexes; and the index after the block."""
    i = start
    while i < len(lines) and OPTION.match(lines[i]) and _indent(lines[i]) > indent:
        i += 1
    body = []
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        body.append((i, lines[i]))
        i += 1
    while body and not body[-1][1].strip():
        body.pop()
    common = min((_indent(t) for _, t in body if t.strip()), default=0)
    return [(n, t[common:].rstrip()) for n, t in body], i


def _markers(lines: list[str], at: int) -> list[tuple[int, str, str]]:
    """The marker comments directly above line ``at`` (blank lines may separate them)."""
    found = []
    i = at - 1
    while i >= 0:
        if not lines[i].strip():
            i -= 1
            continue
        m = MARKER.match(lines[i])
        if not m:
            break
        found.append((i, m["name"], m["rest"]))
        i -= 1
    return found


def _commands(lang: str, body: list[tuple[int, str]]) -> list[Command]:
    commands: list[Command] = []
    session = lang == "console"
    it = iter(body)
    for n, text in it:
        if session:
            if not text.startswith("$ "):
                if commands and text.strip():
                    commands[-1].output.append(text)
                continue
            text = text[2:]
        elif not text.strip() or text.lstrip().startswith("#"):
            continue
        cmd = Command(n + 1, text)
        while cmd.text.endswith("\\"):
            nxt = next(it, None)
            if nxt is None:
                break
            cmd.text += "\n" + nxt[1]
        commands.append(cmd)
    return commands


def collect(text: str, path: str) -> list[Block]:
    """Every shell block of one rst text, markers applied (see the module docstring)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    used: set[int] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = DIRECTIVE.match(line)
        lang = None
        if m and m["lang"] in SHELL_LANGS:
            lang, indent = m["lang"], len(m["indent"])
        elif (line.rstrip().endswith("::") and not line.lstrip().startswith("..")
              and line.strip() != ""):
            indent = _indent(line)
            body, _ = _body(lines, i + 1, indent)
            first = next((t for _, t in body if t.strip()), "")
            if first.startswith("$ "):
                lang = "console"
        if lang is None:
            i += 1
            continue
        body, after = _body(lines, i + 1, indent)
        block = Block(path, i + 1, lang, _commands(lang, body))
        for n, name, rest in _markers(lines, i):
            used.add(n)
            block.marker_lines.append(n + 1)
            if name == "illustrative":
                block.illustrative = rest.lstrip(":").strip()
            elif name == "expect-exit":
                block.expect_exit = int(rest.lstrip(":").strip())
            else:
                block.fresh = True
        blocks.append(block)
        i = after
    orphans = [n + 1 for n, t in enumerate(lines) if MARKER.match(t) and n not in used]
    if orphans:
        raise ValueError(f"{path}: marker(s) not directly before a shell block, line(s) "
                         f"{', '.join(map(str, orphans))}")
    return blocks


def collect_file(path: Path) -> list[Block]:
    return collect(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())


def all_blocks() -> dict[str, list[Block]]:
    return {p.relative_to(ROOT).as_posix(): collect_file(p) for p in doc_files()}


# -- the collector itself --------------------------------------------------------------

SAMPLE = """\
Title
=====

.. illustrative: RRN is the payment's

.. code-block:: sh

   bankgate simulate reverse RRN

.. code-block:: sh

   # a comment
   bankgate simulate --bank demo-fixed load \\
       --rate 20 --duration 5
   bankgate recon runs

.. fresh-gateway
.. expect-exit: 1

.. code-block:: console

   $ bankgate withholding result --bank demo-delim
   1032102026112801.PK  bank demo-delim
     lines 33
   $ D=$(date +%F)

A session::

   $ bankgate --version
   bankgate 0.1.0

A picture::

   bankgate/   the engine

.. code-block:: text

   $ not a shell block
"""


def test_collector_reads_markers_commands_and_output():
    blocks = collect(SAMPLE, "sample.rst")
    assert [(b.line, b.lang) for b in blocks] == [(6, "sh"), (10, "sh"), (20, "console"),
                                                  (27, "console")]
    marked, loaded, session, literal = blocks
    assert marked.illustrative == "RRN is the payment's"
    assert [c.text for c in marked.commands] == ["bankgate simulate reverse RRN"]
    assert loaded.illustrative is None and not loaded.fresh and loaded.expect_exit == 0
    assert [(c.line, c.text) for c in loaded.commands] == [
        (13, "bankgate simulate --bank demo-fixed load \\\n    --rate 20 --duration 5"),
        (15, "bankgate recon runs"),
    ]
    assert session.fresh and session.expect_exit == 1 and session.illustrative is None
    assert [c.text for c in session.commands] == [
        "bankgate withholding result --bank demo-delim", "D=$(date +%F)"]
    assert session.commands[0].output == ["1032102026112801.PK  bank demo-delim",
                                          "  lines 33"]
    assert [c.text for c in literal.commands] == ["bankgate --version"]
    assert literal.commands[0].output == ["bankgate 0.1.0"]


def test_collector_refuses_a_marker_away_from_a_block():
    text = ".. illustrative: forgot the block\n\nSome prose.\n\n.. code-block:: sh\n\n   ls\n"
    with pytest.raises(ValueError, match=r"x\.rst: .*line\(s\) 1"):
        collect(text, "x.rst")


def test_the_docs_have_runnable_blocks_and_every_illustrative_one_says_why():
    blocks = [b for bs in all_blocks().values() for b in bs]
    runnable = [b for b in blocks if b.illustrative is None]
    assert len(runnable) >= MIN_RUNNABLE, [b.where for b in runnable]
    for b in blocks:
        assert b.commands, f"{b.where}: a shell block without a command"
        if b.illustrative is not None:
            assert b.illustrative, f"{b.where}: '.. illustrative:' needs a reason"


def test_substitutions_map_the_readers_machine_to_the_workspace():
    cmd = ("sudo -u bankgate bankgate -c /etc/bankgate/bankgate.toml backup --out "
           "/mnt/backup/bankgate && .venv/bin/bankgate --demo status --demo-x")
    assert substitute(cmd) == ("bankgate -c bankgate.toml backup --out backup && "
                               ".venv/bin/bankgate --config bankgate.toml status --demo-x")


# -- running ---------------------------------------------------------------------------

#: the embedded demo on free ports, with no schedule: the template the browser tests and
#: the screenshots start too (a test below checks it against the demo)
DEMO_CONFIG = CONFIG
#: what the workspace's configuration may differ in from the embedded demo: the ports,
#: the schedule (no cut-off at 23:30, no nightly run at 02:00: the run must not depend on
#: the hour) and what parsing a file records besides the values
NOT_COMPARED = {"listen", "cutoff_time", "reconcile_time", "stated_keys", "defaulted"}


def substitute(text: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        text = pattern.sub(replacement, text)
    return text


def word_pattern(line: str) -> re.Pattern | None:
    """The first word of a shown output line, digits free (they are dates, serials and
    amounts of the day the doc was written); ``None`` for an elision."""
    words = substitute(line).split()
    if not words or words[0] in ("...", "…"):
        return None
    parts = re.split(r"(\d+)", words[0])
    return re.compile("".join(r"\d+" if p.isdigit() else re.escape(p) for p in parts))


def workspace_config(ports: dict) -> str:
    return DEMO_CONFIG.format(data="var", customers=1000, key=DEMO_MAC_KEY, kcv_3des=DEMO_KCV,
                              kcv_sm4=KCV_SM4, **ports)


def test_the_workspace_runs_the_embedded_demo_on_other_ports():
    """The docs speak of the demo (``make run``): if the demo changes, this says so,
    and :data:`DEMO_CONFIG` follows it."""
    ports = {"fixed": 1, "delim": 2, "iso": 3, "xml": 4, "host": 5, "console": 6}
    ours = parse_config(tomllib.loads(workspace_config(ports)), "DEMO_CONFIG")
    demo = default_config("var")
    for k in ("data_dir", "timezone", "db_url", "n8_create", "demo_customers"):
        assert getattr(ours, k) == getattr(demo, k), k
    assert dataclasses.replace(ours.console, listen="P") == dataclasses.replace(
        demo.console, listen="P"), "update DEMO_CONFIG: the demo's [console]"
    assert re.sub(r"^tcp:\d+:", "tcp:P:", ours.console.listen) == re.sub(
        r"^tcp:\d+:", "tcp:P:", demo.console.listen)
    assert ours.bank_names() == demo.bank_names(), "update DEMO_CONFIG: the demo's banks"

    def values(bank) -> dict:
        d = {k: v for k, v in dataclasses.asdict(bank).items() if k not in NOT_COMPARED}
        if "debit_host" in d["options"]:
            d["options"]["debit_host"] = re.sub(r"port=\d+", "port=P", d["options"]["debit_host"])
        return d

    for b_ours, b_demo in zip(ours.banks, demo.banks, strict=True):
        assert values(b_ours) == values(b_demo), f"update DEMO_CONFIG: bank {b_demo.name}"
        assert [re.sub(r"^tcp:\d+:", "tcp:P:", x) for x in b_ours.listen] == [
            re.sub(r"^tcp:\d+:", "tcp:P:", x) for x in b_demo.listen]


class Workspace:
    """The folder the docs call "the same folder as make run", with its own gateway."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True)
        (path / ".venv").symlink_to(VENV, target_is_directory=True)
        # the checkout's docs/ (its example plugins and files), as in the folder of make run
        (path / "docs").symlink_to(ROOT / "docs", target_is_directory=True)
        self.ports = {name: free_port()
                      for name in ("fixed", "delim", "iso", "xml", "host", "console")}
        self.config = path / "bankgate.toml"
        self.config.write_text(workspace_config(self.ports))
        self.gateway = GatewayProcess(self.config, list(self.ports.values()),
                                      path / "gateway.log", cwd=path,
                                      start_timeout=START_TIMEOUT)

    def env(self) -> dict:
        env = self.gateway.env()
        env["PATH"] = f"{self.path / '.venv' / 'bin'}:{env.get('PATH', '')}"
        env["BANKGATE_CONFIG"] = str(self.config)
        env.pop("VIRTUAL_ENV", None)
        return env

    def run(self, block: Block) -> list[tuple[Command, int, str]]:
        """Runs the block in one shell (variables carry from one command to the next),
        up to its first command with an unexpected exit status; returns each command
        run with its status and output."""
        token = f"@@docs-test-{secrets.token_hex(6)}"
        script = ["set -o pipefail"]
        last = len(block.commands) - 1
        for i, cmd in enumerate(block.commands):
            want = block.expect_exit if i == last else 0
            script += [substitute(cmd.text),
                       f"__rc=$?; printf '\\n{token} %d\\n' \"$__rc\"; "
                       f"[ \"$__rc\" -eq {want} ] || exit 0"]
        try:
            proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=self.path,
                                  env=self.env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  timeout=BLOCK_TIMEOUT)
            out = proc.stdout.decode("utf-8", errors="replace")
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode("utf-8", errors="replace")
            out += f"\n(timed out after {BLOCK_TIMEOUT:g} s)\n{token} -1\n"
        results = []
        pieces = re.split(rf"\n{re.escape(token)} (-?\d+)\n", out)
        # a command cut short has no status: zip stops at the shorter list
        for cmd, text, rc in zip(block.commands, pieces[0::2], pieces[1::2], strict=False):
            results.append((cmd, int(rc), text))
        if len(results) < len(block.commands) and len(pieces) % 2 == 1 and pieces[-1]:
            # the shell itself stopped (a syntax error): blame the next command
            results.append((block.commands[len(results)], -1, pieces[-1]))
        return results


def check_block(ws: Workspace, block: Block) -> None:
    results = ws.run(block)
    last = len(block.commands) - 1
    for i, (cmd, rc, out) in enumerate(results):
        want = block.expect_exit if i == last else 0
        problem = None
        if rc != want:
            problem = f"exit status {rc}, expected {want}"
        elif "Traceback (most recent call last)" in out:
            problem = "a Python traceback"
        else:
            missing = [line for line in cmd.output
                       if (p := word_pattern(line)) and not p.search(out)]
            if missing:
                problem = ("output the doc shows is not there (first word of each line "
                           "checked): " + " | ".join(missing))
        if problem:
            tail = "\n".join(out.splitlines()[-25:])
            pytest.fail(f"{block.path}:{cmd.line}: {problem}\n$ {substitute(cmd.text)}\n"
                        f"--- output (tail) ---\n{tail}\n--- gateway log (tail) ---\n"
                        f"{ws.gateway.tail(15)}", pytrace=False)
    if len(results) < len(block.commands):
        pytest.fail(f"{block.where}: only {len(results)} of {len(block.commands)} "
                    "command(s) ran", pytrace=False)


BLOCKS = all_blocks()


@pytest.mark.e2e
@pytest.mark.parametrize("doc", [p for p, bs in BLOCKS.items()
                                 if any(b.illustrative is None for b in bs)])
def test_doc_commands_run_against_a_fresh_gateway(doc, tmp_path):
    if not (VENV / "bin" / "bankgate").exists():
        pytest.skip(f"no bankgate script in {VENV}/bin: run the tests from the venv")
    ws = None
    try:
        for n, block in enumerate(b for b in BLOCKS[doc] if b.illustrative is None):
            if ws is None or block.fresh:
                if ws is not None:
                    ws.gateway.stop()
                ws = Workspace(tmp_path / f"ws{n}")
                ws.gateway.start()
            check_block(ws, block)
    finally:
        if ws is not None:
            ws.gateway.stop()
