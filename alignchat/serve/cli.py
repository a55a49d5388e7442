"""`alignchat serve`: the OpenAI-compatible API and the web chat UI on one uvicorn server.

The model is pulled on first use (a registry name such as the default `smollm2-135m-instruct`, a checkpoint
directory, a .gguf file or a Hugging Face directory) and loads in the background while the server starts.
Bound to a loopback address the UI needs no login; bound to any other address (0.0.0.0 and the empty host
included) every request must log in (create accounts with `alignchat users add`), unless the loudly named
`--insecure-no-login` says otherwise.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..errors import UserError
from .runtime import ServeConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    parser.add_argument("--model", default=d.model,
                        help=f"registry name, checkpoint dir, .gguf or HF dir (default: {d.model})")
    parser.add_argument("--model-id", default=None, help="name clients use for the model (default: from --model)")
    parser.add_argument("--host", default=d.host, help=f"address to bind (default: {d.host}; "
                                                       f"any non-loopback address requires login)")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port})")
    parser.add_argument("--db", default=None,
                        help="SQLAlchemy database URL (default: sqlite:///$ALIGNCHAT_HOME/serve/alignchat.db; "
                             "postgresql+psycopg://... works too)")
    parser.add_argument("--max-batch", type=int, default=d.max_batch,
                        help=f"engine slots: requests decoded together in one step (default: {d.max_batch})")
    parser.add_argument("--context", type=int, default=d.context,
                        help=f"tokens per slot, prompt + answer; capped by the model's context; sizes the KV cache "
                             f"(default: {d.context})")
    parser.add_argument("--max-waiting", type=int, default=d.max_waiting,
                        help=f"queued requests beyond the slots before answering 429 (default: {d.max_waiting})")
    parser.add_argument("--require-login", action="store_true",
                        help="require login even on a loopback address")
    parser.add_argument("--insecure-no-login", action="store_true",
                        help="DANGEROUS: beyond loopback too, serve every client as the admin user `local`, "
                             "without a password")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="a host name clients use to reach the server (repeatable; any port; `*`: any name). "
                             "Accepted anyway: the bound name, localhost/127.0.0.1/[::1] on loopback or "
                             "0.0.0.0, and IP addresses when bound beyond loopback")
    parser.add_argument("--max-messages", type=int, default=d.max_messages, metavar="N",
                        help=f"most messages in one conversation sent to the model (default: {d.max_messages})")
    parser.add_argument("--max-body", type=int, default=d.max_body, metavar="BYTES",
                        help=f"largest request body (default: {d.max_body}; library uploads have their own limit)")
    parser.add_argument("--login-lockout", type=float, default=d.login_lockout, metavar="SECONDS",
                        help=f"after {d.login_max_failures} failed logins of one user name (more from one "
                             f"address), refuse it this long, doubling with each further failure "
                             f"(default: {d.login_lockout:g})")
    parser.add_argument("--login-window", type=float, default=d.login_window, metavar="SECONDS",
                        help=f"forget failed logins after this long without one (default: {d.login_window:g})")
    parser.add_argument("--device", default=d.device, help="torch device for the model (default: cpu); on cuda the "
                                                           "engine decodes with CUDA graphs")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--no-embeddings", action="store_true", help="do not offer /v1/embeddings")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .auth import is_loopback
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")
    if args.max_batch < 1:
        raise UserError("--max-batch must be at least 1")
    if args.context < 16:
        raise UserError("--context must be at least 16 tokens")
    if args.max_messages < 1:
        raise UserError("--max-messages must be at least 1")
    if args.max_body < 1:
        raise UserError("--max-body must be at least 1 byte")
    if args.login_lockout <= 0 or args.login_window <= 0:
        raise UserError("--login-lockout and --login-window must be positive")
    cfg = ServeConfig(model=args.model, model_id=args.model_id, host=args.host, port=args.port, db=args.db,
                      max_batch=args.max_batch, max_waiting=args.max_waiting, context=args.context,
                      require_login=True if args.require_login else None, device=args.device, dtype=args.dtype,
                      enable_embeddings=not args.no_embeddings, insecure_no_login=args.insecure_no_login,
                      allowed_hosts=tuple(args.allowed_host), max_body=args.max_body, max_messages=args.max_messages,
                      login_lockout=args.login_lockout, login_window=args.login_window)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config=cfg)
    ctx = app.state.ctx
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else ("[::1]" if args.host == "::" else args.host)
    print(f"alignchat: web UI at http://{shown}:{args.port}/  (API: http://{shown}:{args.port}/v1)", flush=True)
    print(f"alignchat: model {ctx.host.model_id!r} loads in the background; database {ctx.store.url}", flush=True)
    if ctx.require_login:
        users = [u for u in ctx.accounts.list_users() if u["can_login"]]
        print("alignchat: login required" + ("" if users else
              "; no account can log in yet: create one with `alignchat users add NAME --admin`"), flush=True)
    elif not is_loopback(args.host):
        print(f"alignchat: WARNING: --insecure-no-login: login is OFF on {args.host or 'every interface'}: "
              f"anyone who can reach port {args.port} acts as the admin user `local`, reads and deletes every "
              f"conversation of that user and exports all feedback", file=sys.stderr, flush=True)
    if not is_loopback(args.host) and not args.allowed_host:
        print("alignchat: clients reach it by IP address (or localhost); for a host name, add --allowed-host NAME",
              flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=3)
    return 0
