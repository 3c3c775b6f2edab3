"""``netecho rpc HOST:PORT [CALL ARGS]``: the Perspective Broker client."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys

from twisted.cred import credentials
from twisted.internet import defer, endpoints
from twisted.spread import pb

from netecho.address import join_host_port
from netecho.cli.types import host_port, positive
from netecho.errors import UserError, dial_error

CALLS = ("add", "subtract", "echo", "stats", "lookup", "faults", "quit")


def _signed(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None


def myints(a: int, b: int) -> tuple[int, int, bool, bool]:
    """Signed integers as the classic (a1, a2, s1, s2): magnitudes and signs."""
    return abs(a), abs(b), a < 0, b < 0


def _password(args: argparse.Namespace, user: str) -> str:
    if os.environ.get("NETECHO_PASSWORD") is not None:
        return os.environ["NETECHO_PASSWORD"]
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                return f.readline().rstrip("\r\n")
        except OSError as e:
            raise UserError(f"--password-file {args.password_file}: {e.strerror.lower()}") from None
    if os.isatty(0):
        return getpass.getpass(f"Password for {user}: ")
    raise UserError(
        f"no password for {user}: set NETECHO_PASSWORD, use --password-file, or run on a terminal"
    )


def _remote_message(failure) -> str:
    text = failure.getErrorMessage()
    return text.splitlines()[0] if text else failure.type


async def call(reactor, args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    host, port = args.address
    target = join_host_port(host, port)
    user = args.user or os.environ.get("NETECHO_USER")
    creds = (
        credentials.UsernamePassword(user.encode(), _password(args, user).encode())
        if user
        else credentials.Anonymous()
    )
    factory = pb.PBClientFactory()
    endpoint = endpoints.HostnameEndpoint(reactor, host, port, timeout=args.timeout)
    try:
        await endpoint.connect(factory)
    except Exception as e:
        raise dial_error("tcp", target, e) from None
    try:
        login = factory.login(creds)
        login.addTimeout(args.timeout, reactor)
        try:
            avatar = await login
        except defer.TimeoutError:
            raise UserError(f"rpc {target}: no login reply within {args.timeout:g}s") from None
        except pb.PBConnectionLost:
            raise UserError(f"rpc {target}: connection lost during login") from None
        except pb.RemoteError as e:
            # A refused login arrives as a copy of the server's UnauthorizedLogin.
            kind = e.remoteType.decode() if isinstance(e.remoteType, bytes) else str(e.remoteType)
            if kind.endswith(("UnauthorizedLogin", "UnhandledCredentials")):
                detail = str(e.args[1]) if len(e.args) > 1 and e.args[1] else ""
                raise UserError(f"rpc {target}: not authorized" + (f" ({detail})" if detail else "")) from None
            raise UserError(f"rpc {target}: login failed: {kind}") from None
        return await _run_call(reactor, avatar, args, out, target)
    finally:
        factory.disconnect()


async def _remote(avatar, target: str, name: str, *call_args, timeout: float, reactor):
    d = avatar.callRemote(name, *call_args)
    d.addTimeout(timeout, reactor)
    try:
        return await d
    except pb.Error as e:  # pragma: no cover - CopiedFailure arrives as below
        raise UserError(f"rpc {name}: {e}") from None
    except defer.TimeoutError:
        raise UserError(f"rpc {target}: no reply to {name} within {timeout:g}s") from None
    except pb.PBConnectionLost:
        raise UserError(f"rpc {target}: connection lost") from None


async def _run_call(reactor, avatar, args, out, target: str) -> int:
    def remote(name, *call_args):
        d = defer.ensureDeferred(_remote(avatar, target, name, *call_args, timeout=args.timeout, reactor=reactor))

        def remote_error(failure):
            if failure.check(UserError):
                return failure
            raise UserError(f"rpc {name}: {_remote_message(failure)}")

        return d.addErrback(remote_error)

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    name, rest = args.call, args.args
    if name is None:
        say(f"Reply (Add): {await remote('add', 17, 18, True, False)}")
        say(f"Reply (Subtract): {await remote('subtract', 17, 18, True, False)}")
        return 0
    if name in ("add", "subtract"):
        say(str(await remote(name, *myints(*map(int, rest)))))
    elif name == "echo":
        say(str(await remote("echo", rest[0])))
    elif name == "stats":
        say(json.dumps(await remote("stats"), indent=2, sort_keys=True))
    elif name == "lookup":
        for answer in await remote("lookup", *rest):
            say(answer["data"])
    elif name == "faults":
        in_force = await remote("faults", rest[0])
        say(f"faults: {in_force or 'none'}")
    elif name == "quit":
        await remote("quit")
        say("server stopping")
    return 0


def run(args: argparse.Namespace) -> int:
    from netecho.cli.runner import run as run_on_reactor

    problem = call_problem(args)
    if args.password is not None:
        # Never repeat what followed --password: it may be the secret.
        problem = ("passwords are never taken from the command line "
                   "(use NETECHO_PASSWORD, --password-file, or the prompt on a terminal)")
    if problem:
        print(f"netecho rpc: error: {problem}", file=sys.stderr)
        return 2

    return run_on_reactor(lambda reactor: call(reactor, args))


def register(sub) -> None:
    """Add the C{rpc} subcommand."""
    p = sub.add_parser(
        "rpc",
        help="call the Perspective Broker RPC service",
        description="Log in (anonymously, or as --user) and make one call. With no CALL: "
        "the classic demo, add and subtract of (17, 18, True, False). Calls: "
        "add A B, subtract A B (signed integers), echo TEXT, stats (JSON), "
        "lookup NAME [TYPE], faults SPEC (replace the daemon's --faults; '' clears them) and "
        "quit (authenticated users only). The password comes "
        "from NETECHO_PASSWORD, --password-file, or a prompt on a terminal; "
        "never from the command line.",
    )
    p.add_argument("address", metavar="HOST:PORT", type=host_port)
    p.add_argument("call", nargs="?", metavar="CALL", help="one of: " + ", ".join(CALLS))
    p.add_argument("args", nargs="*", metavar="ARG", help="the call's arguments")
    p.add_argument("--user", metavar="NAME", help="log in as NAME (default: $NETECHO_USER, else anonymous)")
    p.add_argument("--password-file", metavar="FILE", help="read the password from FILE's first line")
    # Only to refuse it without echoing the value (see run()).
    p.add_argument("--password", nargs="?", const="", default=None, help=argparse.SUPPRESS)
    p.add_argument("--timeout", type=positive, default=10.0, metavar="S",
                   help="seconds to wait for the connection, the login and the reply (default 10)")
    p.set_defaults(run=run, take_extra=_take_extra)


def _take_extra(args: argparse.Namespace, extra: list[str], parser) -> None:
    # Words after an option (HOST:PORT --user u add 1 2) arrive here.
    if args.call is None:
        args.call, *extra = extra
    args.args = [*args.args, *extra]


def call_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the call and its arguments (a usage error), if anything."""
    name, rest = args.call, args.args
    if name is None:
        return "the demo takes no arguments" if rest else None
    if name not in CALLS:
        return f"unknown call {name!r} (choose from {', '.join(CALLS)})"
    wanted = {"add": (2, 2), "subtract": (2, 2), "echo": (1, 1), "stats": (0, 0),
              "lookup": (1, 2), "faults": (1, 1), "quit": (0, 0)}[name]
    if not wanted[0] <= len(rest) <= wanted[1]:
        usage = {"add": "A B", "subtract": "A B", "echo": "TEXT", "lookup": "NAME [TYPE]",
                 "faults": "SPEC  ('' to clear)"}.get(name, "")
        return f"usage: netecho rpc HOST:PORT {name} {usage}".rstrip()
    if name in ("add", "subtract"):
        for value in rest:
            try:
                _signed(value)
            except argparse.ArgumentTypeError as e:
                return f"{name}: {e}"
    return None
