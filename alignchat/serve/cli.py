"""`alignchat serve`: the OpenAI-compatible API and the web chat UI on one uvicorn server.

The model is pulled on first use (a registry name such as the default `smollm2-135m-instruct`, a checkpoint
directory, a .gguf file or a Hugging Face directory) and loads in the background while the server starts.
Bound to a loopback address the UI needs no login; bound to any other address (0.0.0.0 and the empty host
included) every request must log in (create accounts with `alignchat users add`), unless the loudly named
`--insecure-no-login` says otherwise.

With `--upstream URL` there is no local model: an OpenAI-compatible server (vLLM, llama.cpp's server,
another alignchat) answers, behind this server's API, UI, accounts, history and feedback (serve/upstream.py).

Notable choices:
- The flags that only a local model uses (`--model`, `--model-id`, `--device`, `--dtype`, `--quantize`,
  `--compile`, `--context`, `--max-batch`) are refused next to `--upstream` rather than ignored, so a
  command line never says something the server does not do.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..client.endpoint import DEFAULT_API_KEY_ENV
from ..errors import UserError
from .runtime import ServeConfig

LOCAL_MODEL_FLAGS = ("model", "model_id", "device", "dtype", "quantize", "compile", "context", "max_batch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServeConfig()
    # the local model's flags default to None, so that next to --upstream a flag given is told from one not given
    parser.add_argument("--model", default=None,
                        help=f"registry name, checkpoint dir, .gguf or HF dir (default: {d.model})")
    parser.add_argument("--model-id", default=None, help="name clients use for the model (default: from --model)")
    parser.add_argument("--host", default=d.host, help=f"address to bind (default: {d.host}; "
                                                       f"any non-loopback address requires login)")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default: {d.port})")
    parser.add_argument("--db", default=None,
                        help="SQLAlchemy database URL (default: sqlite:///$ALIGNCHAT_HOME/serve/alignchat.db; "
                             "postgresql+psycopg://... works too)")
    parser.add_argument("--max-batch", type=int, default=None,
                        help=f"engine slots: requests decoded together in one step (default: {d.max_batch})")
    parser.add_argument("--context", type=int, default=None,
                        help=f"tokens per slot, prompt + answer; capped by the model's context; sizes the KV cache "
                             f"(default: {d.context})")
    parser.add_argument("--no-prefix-cache", action="store_true",
                        help="compute every prompt in full instead of reusing the cached keys and values of a "
                             "prefix it shares with an earlier one (the conversation so far, a system prompt)")
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
    parser.add_argument("--device", default=None,
                        help=f"torch device for the model: auto (cuda if available, else cpu), cpu, cuda, cuda:1 ... "
                             f"(default: {d.device}); on cuda the engine decodes with CUDA graphs")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: bfloat16 on CUDA and on a CPU with native bf16, else float32; "
                             "/health says which and why)")
    from ..commands.common import add_quantize_arg
    add_quantize_arg(parser)
    parser.add_argument("--no-embeddings", action="store_true", help="do not offer /v1/embeddings")
    parser.add_argument("--tools", default="", metavar="LIST",
                        help="built-in tools the server runs for the model, comma-separated: calculator, python, "
                             "library_search (default: none); accounts and keys may be narrowed with "
                             "`alignchat users tools`")
    parser.add_argument("--max-tool-rounds", type=int, default=d.max_tool_rounds, metavar="N",
                        help=f"most tool rounds of one answer (default: {d.max_tool_rounds})")
    parser.add_argument("--tool-timeout", type=float, default=d.tool_timeout, metavar="SECONDS",
                        help=f"seconds the python tool's program may run (default: {d.tool_timeout:g})")
    up = parser.add_argument_group("upstream (instead of a local model)")
    up.add_argument("--upstream", default=None, metavar="URL",
                    help="answer with this OpenAI-compatible server (vLLM, llama.cpp's server, another alignchat; "
                         "e.g. http://10.0.0.5:8000/v1) instead of a local model; the UI, accounts, history, "
                         "feedback and labelling stay here")
    up.add_argument("--upstream-model", default=None, metavar="NAME",
                    help="the model name to send to it and list in /v1/models (default: the first one it lists)")
    up.add_argument("--upstream-api-key-env", default=DEFAULT_API_KEY_ENV, metavar="VAR",
                    help=f"environment variable holding its API key (default: {DEFAULT_API_KEY_ENV}; unset: no key)")
    up.add_argument("--upstream-timeout", type=float, default=d.upstream_timeout, metavar="SECONDS",
                    help=f"wait this long for its next event before answering 502 (default: {d.upstream_timeout:g})")
    parser.add_argument("--moderation-policy", default=None, metavar="FILE",
                        help="TOML/YAML moderation policy: per category and direction (input/output) block, flag "
                             "or allow (default: moderation on, see docs/safety.md)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    from ..settings import describe_io
    describe_io(parser, reads="the model (--model; a registry name is pulled on first use) or the --upstream server; "
                              "the database (--db: accounts, API keys, sessions, conversations, feedback, the "
                              "library's documents); client requests over HTTP",
                writes="the database (conversations, feedback, labels, accounts' logins and API keys, uploaded "
                       "library documents, with their embeddings beside a SQLite file); a log to standard error; "
                       "a first pull of a registry model into $ALIGNCHAT_HOME")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .auth import is_loopback
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")
    if args.upstream:
        given = [f"--{name.replace('_', '-')}" for name in LOCAL_MODEL_FLAGS if getattr(args, name) is not None]
        if given:
            raise UserError(f"{', '.join(given)} concern{'s' if len(given) == 1 else ''} a local model; with "
                            f"--upstream the upstream runs the model (name it with --upstream-model)")
        if not args.upstream_timeout > 0:
            raise UserError("--upstream-timeout must be positive")
    d = ServeConfig()
    for name in LOCAL_MODEL_FLAGS:
        if getattr(args, name) is None and name != "model_id":
            setattr(args, name, getattr(d, name))
    if args.max_batch < 1:
        raise UserError("--max-batch must be at least 1")
    if args.context < 16:
        raise UserError("--context must be at least 16 tokens")
    if args.max_messages < 1:
        raise UserError("--max-messages must be at least 1")
    if args.max_body < 1:
        raise UserError("--max-body must be at least 1 byte")
    from ..tools import parse_names
    tools = tuple(parse_names(args.tools, "--tools"))
    if args.max_tool_rounds < 0:
        raise UserError("--max-tool-rounds must be 0 or more")
    if not args.tool_timeout > 0:
        raise UserError("--tool-timeout must be positive")
    if args.login_lockout <= 0 or args.login_window <= 0:
        raise UserError("--login-lockout and --login-window must be positive")
    cfg = ServeConfig(model=args.model, model_id=args.model_id, host=args.host, port=args.port, db=args.db,
                      max_batch=args.max_batch, max_waiting=args.max_waiting, context=args.context,
                      prefix_cache=not args.no_prefix_cache,
                      require_login=True if args.require_login else None, device=args.device, dtype=args.dtype,
                      quantize=args.quantize, compile=args.compile,
                      enable_embeddings=not args.no_embeddings, insecure_no_login=args.insecure_no_login,
                      allowed_hosts=tuple(args.allowed_host), max_body=args.max_body, max_messages=args.max_messages,
                      login_lockout=args.login_lockout, login_window=args.login_window,
                      upstream=args.upstream, upstream_model=args.upstream_model,
                      upstream_api_key_env=args.upstream_api_key_env or None, upstream_timeout=args.upstream_timeout,
                      tools=tools, max_tool_rounds=args.max_tool_rounds, tool_timeout=args.tool_timeout,
                      moderation_policy=args.moderation_policy)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config=cfg)
    ctx = app.state.ctx
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else ("[::1]" if args.host == "::" else args.host)
    print(f"alignchat: web UI at http://{shown}:{args.port}/  (API: http://{shown}:{args.port}/v1)", flush=True)
    if ctx.host.local:
        print(f"alignchat: model {ctx.host.model_id!r} loads in the background; database {ctx.store.url}", flush=True)
    else:
        key = (f"with the API key in ${args.upstream_api_key_env}" if ctx.host.client.has_key
               else f"without an API key (${args.upstream_api_key_env} is not set)")
        model = repr(ctx.host.model_id) if ctx.host.model_id else "the first one it lists"
        print(f"alignchat: answering with the upstream {ctx.host.url} (model {model}), {key}; "
              f"database {ctx.store.url}", flush=True)
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
