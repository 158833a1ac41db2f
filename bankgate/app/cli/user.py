"""``bankgate user add|passwd|role|disable|enable|list``: the console's accounts.

The operator's side of :class:`bankgate.app.console.auth.Accounts`: each change is
one transaction, audited with ``--actor`` and ``--reason``.  A password is read
from the terminal (twice, not echoed) or, for scripts, one line of standard input
(``--password-stdin``); never from the command line, where ``ps`` and the shell's
history would show it.  ``docs/console.rst`` is the manual.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable

from bankgate.app import wiring
from bankgate.app.cli.actor import add_actor
from bankgate.app.console.auth import ROLES, AccountError, Accounts


def _password(args) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    if not sys.stdin.isatty():
        raise AccountError("password", "standard input is not a terminal: give"
                                       " --password-stdin and the password on one line")
    first = getpass.getpass(f"new password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise AccountError("password", "the two passwords differ: nothing changed")
    return first


def add_cli(subparsers, load_config: Callable, make_store: Callable) -> None:
    """Register ``bankgate user``.  ``load_config(path)`` and ``make_store(cfg)`` (a
    migrated store) are the command's own.  Exit status: 0 done, 1 refused."""

    def run(action):
        def func(args) -> int:
            cfg = load_config(args.config)
            accounts = Accounts(make_store(cfg), wiring.wall_clock(cfg))
            try:
                return action(accounts, args)
            except AccountError as e:
                print(f"bankgate user {args.sub}: {e.field}: {e}", file=sys.stderr)
                return 1
        return func

    p = subparsers.add_parser(
        "user", help="console users: add, change password or role, disable, list",
        description=(
            "The operator console's users (docs/console.rst). Roles: viewer (sees),\n"
            "operator (also acts: reversals, refunds, invoices), admin (also manages\n"
            "users). Every change is recorded in the audit trail with --actor and\n"
            "--reason. The running console ends a user's sessions within 30 s of a\n"
            "change of password or role, or of disabling."),
        epilog=(
            "examples:\n"
            "  bankgate user list\n"
            "  bankgate user add zhao --role operator --actor li\n"
            "  bankgate user add wang --role viewer --password-stdin --reason auditor\n"
            "  bankgate user disable zhao --reason \"left the company\" --actor li"))
    sub = p.add_subparsers(dest="sub", required=True)

    def common(c, password: bool = False):
        c.add_argument("name", help="the user name")
        if password:
            c.add_argument("--password-stdin", action="store_true",
                           help="read the password from one line of standard input"
                                " (default: ask twice on the terminal)")
        c.add_argument("--reason", default="", help="why, for the audit trail")
        add_actor(c)

    def parser(name, help, description, *examples):
        return sub.add_parser(name, help=help, description=description,
                              epilog="examples:\n" + "".join(f"  {e}\n" for e in examples))

    c = parser("add", "add a user with a role and a password",
               "Add a console user with a role (viewer, operator, admin). The password has\n"
               "at least 10 characters: asked twice on the terminal, or one line of\n"
               "standard input with --password-stdin.",
               "bankgate user add zhao --role operator --actor li",
               "bankgate user add wang --role viewer --password-stdin --reason auditor")
    common(c, password=True)
    c.add_argument("--role", choices=ROLES, required=True, help="viewer, operator or admin")
    c.set_defaults(func=run(_cmd_add))

    c = parser("passwd", "set a user's password (ends their sessions)",
               "Set a user's password; the user's open console sessions end.",
               "bankgate user passwd admin --reason forgotten --actor li")
    common(c, password=True)
    c.set_defaults(func=run(_cmd_passwd))

    c = parser("role", "change a user's role (ends their sessions)",
               "Change a user's role; the user's open console sessions end.",
               "bankgate user role zhao viewer --reason \"read only\" --actor li")
    common(c)
    c.add_argument("role", choices=ROLES, help="viewer, operator or admin")
    c.set_defaults(func=run(_cmd_role))

    c = parser("disable", "stop a user from signing in (ends their sessions)",
               "Stop a user from signing in; the user's open console sessions end.",
               "bankgate user disable zhao --reason \"left the company\" --actor li")
    common(c)
    c.set_defaults(func=run(lambda a, args: _cmd_disable(a, args, True)))

    c = parser("enable", "let a disabled user sign in again",
               "Let a disabled user sign in again.",
               "bankgate user enable zhao --actor li")
    common(c)
    c.set_defaults(func=run(lambda a, args: _cmd_disable(a, args, False)))

    c = parser("list", "list the users: name, role, state, last sign-in",
               "List the console's users: name, role, enabled or disabled, the last\n"
               "sign-in and the last change.",
               "bankgate user list", "bankgate -c /etc/bankgate/bankgate.toml user list")
    c.set_defaults(func=run(_cmd_list))


def _cmd_add(accounts: Accounts, args) -> int:
    accounts.add(args.name, args.role, _password(args), actor=args.actor, reason=args.reason)
    print(f"user {args.name} added ({args.role})")
    return 0


def _cmd_passwd(accounts: Accounts, args) -> int:
    accounts.passwd(args.name, _password(args), actor=args.actor, reason=args.reason)
    print(f"user {args.name}: password changed")
    return 0


def _cmd_role(accounts: Accounts, args) -> int:
    accounts.set_role(args.name, args.role, actor=args.actor, reason=args.reason)
    print(f"user {args.name}: role {args.role}")
    return 0


def _cmd_disable(accounts: Accounts, args, disabled: bool) -> int:
    accounts.set_disabled(args.name, disabled, actor=args.actor, reason=args.reason)
    print(f"user {args.name}: {'disabled' if disabled else 'enabled'}")
    return 0


def _cmd_list(accounts: Accounts, args) -> int:
    rows = accounts.list()
    if not rows:
        print("no users (the console creates 'admin' on its first start)")
        return 0
    print(f"{'name':20} {'role':9} {'state':9} {'last sign-in':19} changed")
    for u in rows:
        state = "disabled" if u["disabled_at"] else "enabled"
        last = f"{u['last_login_at']:%Y-%m-%d %H:%M:%S}" if u["last_login_at"] else "-"
        print(f"{u['name']:20} {u['role']:9} {state:9} {last:19}"
              f" {u['changed_at']:%Y-%m-%d %H:%M:%S}")
    return 0
