"""`alignchat users`: accounts and API keys for `alignchat serve`.

Passwords are read from the terminal (or `--password-stdin`), never from the command line, so they stay out
of shell history and process listings. Without a terminal, `add` and `passwd` need `--password-stdin` (the
first line of standard input) and say so. An API key is printed once; only its hash is stored.

Built-in tool rights (what `alignchat serve --tools` enables, narrowed per account and per key):
`alignchat users tools NAME --allow calculator,python` (or `--allow ""` for none, `--all` for every tool the
server enables), `alignchat users key NAME --tools calculator`, `alignchat users key-tools PREFIX --allow ...`
(or `--account` for the account's own rights).
"""
from __future__ import annotations

import argparse
import getpass
import json
import sys

from ..errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=None, help="database URL (default: the server's default SQLite file)")
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = sub.add_parser("add", help="create a user")
    a.add_argument("username")
    a.add_argument("--admin", action="store_true", help="may use labelling mode and export")
    a.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p = sub.add_parser("passwd", help="set a user's password (ends their logins)")
    p.add_argument("username")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    sub.add_parser("list", help="list users")
    k = sub.add_parser("key", help="create an API key for a user and print it (once)")
    k.add_argument("username")
    k.add_argument("--name", default="", help="a label for the key")
    k.add_argument("--tools", default=None, metavar="LIST",
                   help="built-in tools this key may use, comma-separated (default: its account's)")
    sub.add_parser("keys", help="list API keys (prefixes only)")
    r = sub.add_parser("revoke", help="revoke API keys by prefix (as shown by `keys`)")
    r.add_argument("prefix")
    g = sub.add_parser("admin", help="grant or remove the admin role")
    g.add_argument("username")
    g.add_argument("--remove", action="store_true")
    t = sub.add_parser("tools", help="set the built-in tools a user may use")
    t.add_argument("username")
    tw = t.add_mutually_exclusive_group(required=True)
    tw.add_argument("--allow", metavar="LIST", help='comma-separated tool names ("" for none)')
    tw.add_argument("--all", action="store_true", help="every tool the server enables (the default)")
    kt = sub.add_parser("key-tools", help="set the built-in tools the API keys with a prefix may use")
    kt.add_argument("prefix")
    ktw = kt.add_mutually_exclusive_group(required=True)
    ktw.add_argument("--allow", metavar="LIST", help='comma-separated tool names ("" for none)')
    ktw.add_argument("--account", action="store_true", help="the key's account's tools (the default)")
    dl = sub.add_parser("delete", help="delete a user and all their conversations and feedback")
    dl.add_argument("username")
    from ..settings import describe_io
    db = "the server's database (--db)"
    describe_io(a, reads=f"{db} and the password (the terminal, or the first line of standard input)",
                writes=f"a new account, with the password's hash, into {db}")
    describe_io(p, reads=f"{db} and the new password (the terminal, or the first line of standard input)",
                writes=f"the account's password hash into {db}, ending the user's logins")
    describe_io(sub.choices["list"], reads=f"{db}: the accounts", writes="nothing (prints one JSON line per user)")
    describe_io(k, reads=f"{db}: the account", writes=f"the new key's hash into {db}; the key itself only to "
                                                     "standard output, once")
    describe_io(sub.choices["keys"], reads=f"{db}: the API keys (prefixes, never the keys)",
                writes="nothing (prints one JSON line per key)")
    describe_io(r, reads=f"{db}: the API keys", writes=f"the matching keys marked revoked in {db}")
    describe_io(g, reads=f"{db}: the account", writes=f"the account's admin role in {db}")
    describe_io(t, reads=f"{db}: the account", writes=f"the account's built-in tool rights in {db}")
    describe_io(kt, reads=f"{db}: the API keys", writes=f"the matching keys' built-in tool rights in {db}")
    describe_io(dl, reads=f"{db}: the account",
                writes=f"deletes the account with its conversations, feedback, keys and logins from {db}, and "
                       "its library (documents, passages, index vectors)")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
        if not pw:
            raise UserError("--password-stdin: standard input has no password (write it as the first line)")
        return pw
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for the password on: pass --password-stdin and write the password "
                        "as the first line of standard input")
    try:
        pw = getpass.getpass("password: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise UserError("no password given") from None
    if again != pw:
        raise UserError("the passwords differ")
    return pw


def run(args: argparse.Namespace) -> int:
    from .auth import Accounts
    from .store import Store
    # ask before opening the database: a refused prompt leaves nothing behind
    password = _password(args.password_stdin) if args.action in ("add", "passwd") else None
    store = Store(args.db)
    acc = Accounts(store)
    try:
        if args.action == "add":
            acc.create_user(args.username, password, is_admin=args.admin)
            print(f"created user {args.username}" + (" (admin)" if args.admin else ""))
        elif args.action == "passwd":
            acc.set_password(args.username, password)
            print(f"password of {args.username} changed")
        elif args.action == "list":
            for u in acc.list_users():
                print(json.dumps(u))
        elif args.action == "key":
            print(acc.create_api_key(args.username, args.name, tools=args.tools))
        elif args.action == "keys":
            for k in acc.list_api_keys():
                print(json.dumps(k))
        elif args.action == "revoke":
            n = acc.revoke_api_key(args.prefix)
            if not n:
                raise UserError(f"no active key starts with {args.prefix!r}")
            print(f"revoked {n} key(s)")
        elif args.action == "admin":
            acc.set_admin(args.username, not args.remove)
            print(f"{args.username} is {'no longer ' if args.remove else ''}an admin")
        elif args.action == "tools":
            names = acc.set_tools(args.username, None if args.all else args.allow)
            print(f"{args.username} may use " + ("every tool the server enables" if names is None
                                                 else ", ".join(names) or "no tools"))
        elif args.action == "key-tools":
            n = acc.set_key_tools(args.prefix, None if args.account else args.allow)
            if not n:
                raise UserError(f"no active key starts with {args.prefix!r}")
            print(f"set the tools of {n} key(s)")
        elif args.action == "delete":
            acc.delete_user(args.username)
            print(f"deleted user {args.username}")
        return 0
    finally:
        store.dispose()
