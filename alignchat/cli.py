"""`alignchat <verb>`: one verb per stage of the pipeline.

Each verb lives in its own module, named after the verb, which defines `add_arguments(parser)` and
`run(args) -> int | None`. Modules are imported only when their verb is used, so `alignchat --help` and
light verbs start quickly and one stage's heavy imports never slow another.

Notable choices:
- The stage verbs (tokenize, pretrain, sft, rm, ppo, dpo, compare, eval) share one contract
  (`alignchat.settings`): their settings are one dataclass, flags are generated from its fields, `KEY=VALUE`
  and `--config FILE` set the same fields, and the precedence is defaults, then the file, then the command
  line. Every verb says in its `--help` what it reads and writes (`settings.describe_io`).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

# verb -> (module, one-line help). Order is the order of the pipeline.
VERBS: dict[str, tuple[str, str]] = {
    "models": ("alignchat.commands.models", "list, pull and inspect models (the default: smollm2-135m-instruct)"),
    "generate": ("alignchat.commands.generate", "complete one prompt with a model and print the answer"),
    "chat": ("alignchat.commands.chat", "multi-turn chat with a model in the terminal, streamed"),
    "import": ("alignchat.commands.import_cli", "convert a GGUF file or Hugging Face directory into a checkpoint"),
    "export": ("alignchat.commands.export", "export a checkpoint as a Hugging Face directory or a llama.cpp GGUF file"),
    "quantize": ("alignchat.commands.quantize", "write an int8 or int4 weight-only quantised checkpoint"),
    "data": ("alignchat.data.cli", "fetch registry corpora, clean text (PII, dedup, quality), build instruction data"),
    "tokenizer": ("alignchat.data.tokenizer_cli", "train a byte-level BPE on Chinese+English text with the chat special tokens"),
    "tokenize": ("alignchat.data.tokenize_cli", "tokenize text/jsonl/parquet into memory-mapped shards with a train/val split"),
    "pretrain": ("alignchat.train.pretrain", "pretrain a GPT on token shards (presets tiny/small/gpt2-124m; DDP/FSDP under torchrun)"),
    "sft": ("alignchat.train.sft", "supervised fine-tuning on conversations (assistant-only loss, packing)"),
    "compare": ("alignchat.train.compare.cli", "comparison data: sample K responses, rank with an AI judge, import HHH and chat feedback"),
    "rm": ("alignchat.train.rm", "train a reward model on ranked comparisons (K-way pairwise loss, HHH accuracy)"),
    "ppo": ("alignchat.train.ppo", "RLHF with PPO: KL-penalised reward, GAE, clipped losses, PPO-ptx, rollouts on the engine"),
    "dpo": ("alignchat.train.dpo", "Direct Preference Optimisation on comparison data (reference model, beta)"),
    "distill": ("alignchat.train.distill", "distil a teacher into a smaller student: its token distributions (white-box) or its answers as SFT data (black-box)"),
    "serve": ("alignchat.serve.cli", "serve the OpenAI-compatible API and the web chat UI (continuous batching)"),
    "feedback": ("alignchat.serve.feedback_cli", "export the chat UI's feedback as SFT and comparison JSONL"),
    "users": ("alignchat.serve.users_cli", "accounts and API keys for `alignchat serve`"),
    "moderation": ("alignchat.serve.moderation_cli", "moderation: classify text, list and export the server's moderation events"),
    "library": ("alignchat.library.cli", "literature assistant: add papers, ask with verified citations, review, extract, boolean"),
    "eval": ("alignchat.eval.cli", "evaluate models (HELM-style metrics), compare checkpoints, write a report card"),
}


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignchat",
        description="alignchat: pretrain, instruction-tune, align (RLHF/DPO), serve and evaluate your own chat "
                    "model. Run `alignchat VERB --help` for the options of one verb.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == verb:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_module=mod)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(verb if verb in VERBS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 0
    try:
        rc = args._module.run(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except UserError as e:
        print(f"alignchat {args.verb}: error: {e}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
