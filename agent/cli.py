"""The ``dployr-agent`` command: serve, user, token, config check, version.

Exit codes: 0 success, 1 failure at run time, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import secrets
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from agent import __version__
from agent.auth.principal import ROLES
from agent.config import AgentConfig, ConfigError, load_config

__all__ = ["main"]


def _fail(message: str, code: int = 1) -> int:
    print(f"dployr-agent: {message}", file=sys.stderr)
    return code


def _config(args: argparse.Namespace) -> AgentConfig:
    return load_config(Path(args.config) if args.config else None)


# -- serve ------------------------------------------------------------------------------------

class _StartError(Exception):
    """The agent cannot start; the message is one line saying why."""


def _cmd_serve(args: argparse.Namespace) -> int:
    from agent.tls import import_aiohttp

    import_aiohttp()  # first: before anything imports aiohttp (see agent.tls)
    from agent.logconfig import configure_logging, flush_logs
    from agent.store import StoreError

    config = _config(args)
    configure_logging(config.logging.level, config.logging.format)
    os.umask(0o077)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(config.server.event_loop)) as runner:
            runner.run(_serve(config))
    except (StoreError, _StartError) as exc:
        flush_logs()
        return _fail(str(exc))
    except OSError as exc:
        flush_logs()
        return _fail(f"cannot start: {exc.strerror or exc}")
    finally:
        flush_logs()
    return 0


def _loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``[server] event_loop`` asks for (None: asyncio's default loop).

    uvloop is a dependency, so it is normally there; if it cannot be imported (a platform
    without a wheel), the agent says so and runs on asyncio's loop rather than not at all.
    """
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        import structlog
        structlog.get_logger("agent").warning("event_loop_unavailable", event_loop="uvloop",
                                              using="asyncio")
        return None
    return uvloop.new_event_loop


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _serve(config: AgentConfig) -> None:
    import structlog
    from aiohttp import web

    from agent.api.server import AgentRunner
    from agent.app import AdminSeed, create_app
    from agent.listeners import bind_listener
    from agent.logconfig import flush_logs
    from agent.sdnotify import Notifier

    log = structlog.get_logger("agent")
    notifier = Notifier()
    admin = AdminSeed(email=os.environ.get("DPLOYR_ADMIN_EMAIL") or "admin@localhost",
                      password=os.environ.get("DPLOYR_ADMIN_PASSWORD") or None)
    # Bind first: a port in use stops the start before any state is touched.
    try:
        sock = bind_listener(config.server.listen)
    except OSError as exc:
        raise _StartError(f"cannot listen on {config.server.listen}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    try:
        app = create_app(config, admin=admin)
    except BaseException:
        sock.close()
        raise
    runner = AgentRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=config.server.shutdown_timeout,
                           keepalive_timeout=config.server.keepalive_timeout,
                           header_timeout=config.server.header_timeout)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await runner.setup()  # opens the store (integrity check, migrations), seeds the admin
    except BaseException:
        sock.close()
        # Undo what did start (the contexts before the one that failed): apps are left
        # running, the proxy and the store are closed cleanly. The first error is the one told.
        with contextlib.suppress(Exception):
            await runner.cleanup()
        raise
    site = web.SockSite(runner, sock)
    try:
        if not stop.is_set():
            await site.start()
            log.info("agent_listening", address=config.server.listen, version=__version__,
                     event_loop=_loop_name(loop))
            notifier.notify("READY=1")
            async with notifier.watchdog():
                await stop.wait()
    finally:
        # Stop accepting, let in-flight requests finish (up to shutdown_timeout), then close
        # the store. Apps are never touched: they outlive the agent.
        notifier.notify("STOPPING=1")
        log.info("agent_stopping")
        await runner.cleanup()
        log.info("agent_stopped")
        flush_logs()


# -- users and tokens (straight on the store; safe while the agent runs: SQLite WAL) ---------

def _open_store(config: AgentConfig) -> sqlite3.Connection:
    from agent.store import connect
    return connect(config.state.dir / "agent.db", check=False)


def _hasher(config: AgentConfig) -> Callable[[str], str]:
    from argon2 import PasswordHasher
    ph = PasswordHasher(time_cost=config.auth.hash_time_cost, memory_cost=config.auth.hash_memory_kib,
                        parallelism=config.auth.hash_parallelism)
    return ph.hash


def _read_password(args: argparse.Namespace, config: AgentConfig) -> tuple[str, bool]:
    """The new password and whether it was generated (and so must be shown)."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise ValueError("the passwords differ")
    else:
        return secrets.token_urlsafe(18), True
    if len(password) < config.auth.password_min_length:
        raise ValueError(f"the password needs at least {config.auth.password_min_length} characters")
    return password, False


def _cmd_user(args: argparse.Namespace) -> int:
    from agent.auth import users

    config = _config(args)
    conn = _open_store(config)
    now = time.time()
    try:
        if args.action == "list":
            for user in users.list_users(conn):
                print(f"{user.id}\t{user.email}\t{user.role}")
            return 0
        if args.action == "remove":
            return _remove_user(conn, args.email)
        try:
            password, generated = _read_password(args, config)
        except ValueError as exc:
            return _fail(str(exc), 2)
        password_hash = _hasher(config)(password)
        if args.action == "add":
            try:
                with conn:
                    user = users.add_user(conn, email=args.email, password_hash=password_hash,
                                          role=args.role, now=now)
            except ValueError as exc:
                return _fail(f"{args.email}: {exc}", 2)
            except sqlite3.IntegrityError:
                return _fail(f"a user {args.email} already exists")
            print(f"added {user.email} ({user.role}) as {user.id}")
        else:
            with conn:
                if not users.set_password(conn, args.email, password_hash, now=now):
                    return _fail(f"no user {args.email}")
            print(f"password changed for {args.email}; their sessions were ended")
        if generated:
            print(f"password: {password}")
        return 0
    finally:
        conn.close()


def _remove_user(conn: sqlite3.Connection, email: str) -> int:
    from agent.auth import users

    found = users.find_user_by_email(conn, email)
    if found is None:
        return _fail(f"no user {email}")
    with conn:
        admins = conn.execute("SELECT count(*) FROM users WHERE role = 'admin'").fetchone()[0]
        if found[0].role == "admin" and admins <= 1:
            return _fail(f"{email} is the last admin; add another admin first")
        users.remove_user(conn, email)
    print(f"removed {found[0].email}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from agent.auth import users

    config = _config(args)
    conn = _open_store(config)
    try:
        if args.action == "create":
            with conn:
                token, plain = users.create_token(conn, name=args.name, role=args.role,
                                                  now=time.time())
            print(f"created {token.id} ({token.role}); the token is shown only now:",
                  file=sys.stderr)
            print(plain)
        elif args.action == "list":
            for tok in users.list_tokens(conn):
                state = "revoked" if tok.revoked_at else "active"
                print(f"{tok.id}\t{tok.name}\t{tok.role}\t{state}")
        else:
            with conn:
                if not users.revoke_token(conn, args.id, now=time.time()):
                    return _fail(f"no active token {args.id}")
            print(f"revoked {args.id}")
        return 0
    finally:
        conn.close()


def _cmd_config(args: argparse.Namespace) -> int:
    config = _config(args)
    print(f"config ok: listen {config.server.listen}, state dir {config.state.dir}")
    return 0


def _cmd_version(_args: argparse.Namespace) -> int:
    print(f"dployr-agent {__version__}")
    return 0


# -- parser -----------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="PATH",
                        help="TOML config file (default: embedded defaults)")
    parser = argparse.ArgumentParser(prog="dployr-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", parents=[common], help="run the agent").set_defaults(run=_cmd_serve)
    sub.add_parser("version", help="print the version").set_defaults(run=_cmd_version)

    cfg = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    cfg.add_parser("check", parents=[common], help="validate the configuration").set_defaults(
        run=_cmd_config)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="action", required=True)
    add = user.add_parser("add", parents=[common], help="add a user")
    add.add_argument("email")
    add.add_argument("--role", choices=ROLES, default="developer")
    passwd = user.add_parser("passwd", parents=[common], help="change a user's password")
    passwd.add_argument("email")
    for cmd in (add, passwd):
        cmd.add_argument("--password-stdin", action="store_true",
                         help="read the password from stdin (otherwise prompt, or generate one)")
    user.add_parser("list", parents=[common], help="list users")
    user.add_parser("remove", parents=[common], help="remove a user").add_argument("email")
    for cmd in user.choices.values():
        cmd.set_defaults(run=_cmd_user)

    token = sub.add_parser("token", help="manage machine tokens").add_subparsers(
        dest="action", required=True)
    create = token.add_parser("create", parents=[common], help="create a token (printed once)")
    create.add_argument("name")
    create.add_argument("--role", choices=ROLES, default="developer")
    token.add_parser("list", parents=[common], help="list tokens")
    token.add_parser("revoke", parents=[common], help="revoke a token").add_argument("id")
    for cmd in token.choices.values():
        cmd.set_defaults(run=_cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    from agent.store import StoreError

    try:
        code: int = args.run(args)
    except ConfigError as exc:
        return _fail(str(exc), 2)
    except StoreError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    return code
