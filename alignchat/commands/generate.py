"""`alignchat generate`: complete one prompt and print the answer.

Without --raw the prompt is one user turn rendered through the model's chat template (the same function
training uses); with --raw it is fed to the model as plain text.
"""
from __future__ import annotations

import sys

from ..settings import describe_io
from .common import add_model_args, add_sampling_args, load_engine, sampling_from_args


def add_arguments(p) -> None:
    add_model_args(p)
    p.add_argument("--prompt", "-p", required=True, help="the prompt text ('-' reads standard input)")
    p.add_argument("--system", default=None, help="system prompt (chat mode only)")
    p.add_argument("--raw", action="store_true", help="feed the prompt as plain text, without the chat template")
    p.add_argument("--beams", type=int, default=0, help="beam search with this many beams (0 = sampling)")
    p.add_argument("--no-stream", action="store_true", help="print the answer only when it is complete")
    add_sampling_args(p)
    describe_io(p, reads="the model (--model; a registry name is pulled on first use) and the prompt (--prompt, or "
                         "standard input with -p -)",
                writes="the answer to standard output; no files (a registry model's first pull aside)")


def run(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    engine, _ = load_engine(args)
    if args.raw:
        ids = engine.tok.encode(prompt)
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}]
        ids = engine.tok.render_chat(messages, add_generation_prompt=True).ids
    if args.beams:
        print(engine.beam_search(ids, num_beams=args.beams, max_tokens=args.max_tokens).text)
        return 0
    params = sampling_from_args(args)
    if args.no_stream:
        print(engine.generate([ids], params)[0].text)
        return 0
    for delta in engine.stream(ids, params):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0
