"""`alignchat chat`: multi-turn chat in the terminal, streamed token by token.

Commands inside the chat: /reset starts a new conversation (keeping the system prompt), /exit quits.
The whole history is rendered through the model's chat template on every turn.
"""
from __future__ import annotations

import sys

from ..errors import ContextLengthError
from ..settings import describe_io
from .common import add_model_args, add_sampling_args, load_engine, sampling_from_args


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--system", default=None, help="system prompt")
    add_sampling_args(p, max_tokens=512)
    describe_io(p, reads="the model (--model; a registry name is pulled on first use) and your turns from standard "
                         "input",
                writes="the replies to standard output; no files: the conversation is not saved (a registry "
                       "model's first pull aside)")


def run(args) -> int:
    engine, meta = load_engine(args)
    params = sampling_from_args(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"alignchat chat — model: {meta.get('name', args.model)}. /reset clears the conversation, /exit quits.")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(conversation cleared)")
            continue
        history.append({"role": "user", "content": text})
        ids = engine.tok.render_chat(system + history, add_generation_prompt=True).ids
        try:
            engine.check_prompt(ids)
        except ContextLengthError as e:
            print(f"error: {e} — use /reset to start over", file=sys.stderr)
            history.pop()
            continue
        if interactive:
            sys.stdout.write("assistant> ")
        reply = []
        for delta in engine.stream(ids, params):
            reply.append(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(reply)})
    return 0
