"""`alignchat compare`: build, rank, import and check comparison data (the input of `rm`, `dpo` and evaluation).

Subcommands (the work itself lives beside this module: `prompts`, `sampling`, `judges`):
- `sample`: draw K responses per prompt from a checkpoint through the shared engine, each with its own
  seed, and write unranked records (`ranking` in sampled order, `meta.unranked: true`). `--system`
  (repeatable) gives response i the i-th system prompt, cycled, so one ranking can hold replies written
  under contrasting instructions (say, a careful assistant and a careless one); the record's prompt is the
  user's conversation without it, which is what the reward model sees.
- `judge`: rank each record's responses with an AI judge following a written rubric (RLAIF): one of our
  checkpoints (`--judge-model`, scored by `--judge-method contrast|yesno`), any OpenAI-compatible endpoint
  (`--judge-endpoint URL [--judge-endpoint-model NAME]`, key from the variable `--api-key-env` names), or
  a checkable property (`--judge-rule REGEX`). See `judges`.
- `synth-marker`: synthetic pairs for a checkable preference (a response with a marker beats another).
- `import-hhh`: write BIG-bench `hhh_alignment` as comparisons (held-out evaluation set).
- `import-feedback`: turn feedback events (one per line) into SFT records and comparisons.
- `validate`: check comparison files and print counts.

Notable choices:
- Every subcommand takes the stage contract (`alignchat.settings`): its settings are one dataclass below,
  each field a flag and a `KEY=VALUE`, `--config FILE` holds the same keys, the precedence is defaults,
  then the file, then the command line, `--out` is what it writes, and `--help` ends with what it reads
  and writes. The judge's model flags are the shared set (`alignchat.client.cli`), given on the command
  line; `--system` is kept verbatim (commas and '' included), so it is a command-line flag too.
- Long subcommands show a progress bar and can be resumed: records already in the output file are skipped.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...client.cli import DTYPES, add_client_args
from ...data import comparisons as C
from ...errors import UserError
from ...settings import Subcommand, add_settings_arguments, setting, settings_from_args

MODEL_FLAGS_NOTE = ("model flags: --judge-model | --judge-endpoint URL --judge-endpoint-model NAME, --api-key-env "
                    "VAR, --device, --dtype are the shared model flags (the same in every verb), given on the "
                    "command line")


@dataclass
class SampleConfig:
    """`alignchat compare sample`'s settings."""

    model: str = setting("", "checkpoint or registry name to sample from, usually the SFT model (required)")
    prompts: str = setting("", "JSONL of {\"prompt\": [messages]} or a text file, one prompt a line (required)")
    out: str = setting("", "output JSONL of unranked comparisons; prompts already in it are skipped (required)")
    k: int = setting(4, f"responses per prompt, K = 2..{C.MAX_RESPONSES} (InstructGPT: 4..9); also -k")
    max_tokens: int = setting(128, "maximum new tokens per response")
    temperature: float = setting(1.0, "sampling temperature (>0 for diverse responses)")
    top_p: float = setting(1.0, "nucleus sampling mass (1.0 = off)")
    seed: int = setting(0, "base seed; every response gets its own seed from it, so a rerun draws the same")
    batch: int = setting(16, "engine slots: responses decoded together")
    chunk: int = setting(64, "prompts per write (progress survives interruption)")
    device: str = setting("auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:1 ...")
    dtype: str = setting("auto", "weights dtype: auto (bfloat16 on CUDA, float32 on the CPU) or one of "
                                 + ", ".join(DTYPES), choices=("auto",) + DTYPES)
    quiet: bool = setting(False, "no progress bar")


@dataclass
class JudgeConfig:
    """`alignchat compare judge`'s settings (the judge's model: the shared model flags)."""

    input: str = setting("", "JSONL from `compare sample` (required)")
    out: str = setting("", "output comparison JSONL; records already judged in it are skipped (required)")
    judge_method: str = setting("contrast", "for --judge-model: contrast = per-token log p(reply | rubric persona) "
                                            "- log p(reply | rubric-breaking persona); yesno = log P(Yes) - "
                                            "log P(No) to 'does the reply meet the rubric?'",
                                choices=("contrast", "yesno"))
    judge_rule: str = setting("", "a regular expression as the judge: responses with more matches rank higher")
    save_every: int = setting(32, "records judged per write")
    quiet: bool = setting(False, "no progress bar")


@dataclass
class SynthMarkerConfig:
    """`alignchat compare synth-marker`'s settings."""

    input: str = setting("", "JSONL from `compare sample` (required)")
    out: str = setting("", "output comparison JSONL (required)")
    marker: str = setting("", "the preferred string, e.g. '!' or ' please' (required)")
    seed: int = setting(0, "seed of the pairing and of where the marker is put")


@dataclass
class ImportHHHConfig:
    """`alignchat compare import-hhh`'s settings."""

    out: str = setting("", "output comparison JSONL (required)")
    from_file: str = setting("", "a bigbench-1.0.0.tar.gz downloaded elsewhere (else fetched from PyPI once, "
                                 "358 MB)")


@dataclass
class ImportFeedbackConfig:
    """`alignchat compare import-feedback`'s settings."""

    input: str = setting("", "feedback events JSONL, one event per line (required)")
    out: str = setting("", "output directory: OUT/sft.jsonl and OUT/comparisons.jsonl (or give both --sft-out "
                           "and --comparisons-out)")
    sft_out: str = setting("", "the SFT file (default: OUT/sft.jsonl)")
    comparisons_out: str = setting("", "the comparison file (default: OUT/comparisons.jsonl)")
    thumbs_sft: bool = setting(True, "turn thumbs-up answers into SFT records too")


@dataclass
class ValidateConfig:
    """`alignchat compare validate`'s settings."""

    input: list[str] = setting(help="comparison JSONL file(s) to check", factory=list)
    out: str = setting("", "also write the counts here, one JSON line per file (default: print only)")


def _required(cfg: Any, *names: str) -> None:
    missing = [n for n in names if not getattr(cfg, n)]
    if missing:
        raise UserError(f"{' and '.join('--' + n.replace('_', '-') for n in missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} required")


def _print(obj: dict) -> None:
    print(json.dumps(obj, ensure_ascii=False))


# --- sample --------------------------------------------------------------------------------------------

def cmd_sample(cfg: SampleConfig, args) -> int:
    from ...commands.common import pick_device
    from ...commands.common import load_for_inference
    from .prompts import read_prompts
    from .sampling import sample_responses

    _required(cfg, "model", "prompts", "out")
    if not 2 <= cfg.k <= C.MAX_RESPONSES:
        raise UserError(f"-k must be 2..{C.MAX_RESPONSES} (InstructGPT used 4..9)")
    prompts = read_prompts(cfg.prompts)
    systems = list(args.system) or None
    existing = C.read_comparisons(cfg.out) if Path(cfg.out).exists() else []
    done = {json.dumps(c.prompt, sort_keys=True) for c in existing}
    todo = [p for _, p in prompts if json.dumps(p, sort_keys=True) not in done]
    dtype = None if cfg.dtype == "auto" else cfg.dtype
    loaded = load_for_inference(cfg.model, pick_device(cfg.device), dtype)[:2] if todo else None
    new = []
    for start in range(0, len(todo), cfg.chunk):  # write as we go, so an interrupted run keeps its work
        chunk = todo[start:start + cfg.chunk]
        responses = sample_responses(cfg.model, chunk, cfg.k, cfg.max_tokens, cfg.temperature, cfg.top_p,
                                     cfg.seed + start, batch=cfg.batch, progress=not cfg.quiet,
                                     systems=systems, loaded=loaded)
        for p, rs in zip(chunk, responses):
            meta = {"unranked": True, "model": cfg.model, "temperature": cfg.temperature}
            if systems:
                meta["systems"] = [systems[i % len(systems)] or None for i in range(len(rs))]
            new.append(C.Comparison(prompt=p, responses=rs, ranking=list(range(len(rs))), labeller="ai:unranked",
                                    source=f"sample:{cfg.model}", criteria=[], meta=meta))
        C.write_comparisons(cfg.out, existing + new)
    _print({"out": cfg.out, "new": len(new), "skipped_already_sampled": len(prompts) - len(todo), "k": cfg.k})
    return 0


# --- judge ---------------------------------------------------------------------------------------------

def cmd_judge(cfg: JudgeConfig, args) -> int:
    from tqdm.auto import tqdm

    from ...client.cli import client_from_args, wants_model
    from .judges import RUBRIC_CRITERIA, make_judge

    _required(cfg, "input", "out")
    if wants_model(args, "judge-") + bool(cfg.judge_rule) != 1:
        raise UserError("choose exactly one judge: --judge-model CKPT, --judge-endpoint URL or --judge-rule REGEX")
    records = C.read_comparisons(cfg.input, min_responses=2)
    client = None if cfg.judge_rule else client_from_args(args, "judge-", max_batch=8)
    judge = make_judge(client, rule=cfg.judge_rule or None, method=cfg.judge_method)
    out = C.read_comparisons(cfg.out) if Path(cfg.out).exists() else []
    done = {c.meta.get("sampled_id") for c in out}
    todo = [rec for rec in records if rec.id not in done]
    unparseable = no_preference = 0
    bar = tqdm(total=len(todo), desc="judge", disable=cfg.quiet)
    for start in range(0, len(todo), cfg.save_every):  # write as we go: a rerun skips what is judged
        chunk = todo[start:start + cfg.save_every]
        if hasattr(judge, "scores_many"):  # batched across records
            scores = judge.scores_many([(rec.prompt, rec.responses) for rec in chunk])
            orders = [judge.order(sc) for sc in scores]
        else:
            scores = [None] * len(chunk)
            orders = [judge.rank(rec.prompt, rec.responses) for rec in chunk]
        for rec, order, sc in zip(chunk, orders, scores):  # order: best first; may leave out tied responses
            if order is None:
                unparseable += 1
                continue
            if len(order) < 2:
                no_preference += 1
                continue
            meta = {k: v for k, v in rec.meta.items() if k != "unranked"}
            if isinstance(meta.get("systems"), list) and len(meta["systems"]) == len(rec.responses):
                meta["systems"] = [meta["systems"][i] for i in order]
            meta.update({"sampled_id": rec.id, "sampled_order": order})
            if sc is not None:
                meta["judge_scores"] = [round(sc[i], 4) for i in order]
            out.append(C.Comparison(prompt=rec.prompt, responses=[rec.responses[i] for i in order],
                                    ranking=list(range(len(order))), criteria=RUBRIC_CRITERIA,
                                    labeller=f"ai:{judge.name}", source=rec.source, meta=meta))
        C.write_comparisons(cfg.out, out)
        bar.update(len(chunk))
    bar.close()
    C.write_comparisons(cfg.out, out)
    _print({"out": cfg.out, "ranked": len(out), "unparseable_skipped": unparseable,
            "no_preference_skipped": no_preference, "judge": judge.name})
    return 0


# --- synthetic pairs, imports and checks ---------------------------------------------------------------

def cmd_synth_marker(cfg: SynthMarkerConfig, args) -> int:
    """Synthetic comparisons for a checkable preference: a response with the marker beats a *different*
    response to the same prompt without it.

    Pairing different responses (not one response with and without the marker) makes the marker the only
    feature that separates winners from losers across the data, so the reward model learns it rather than
    the incidental features of the texts.
    """
    _required(cfg, "input", "out", "marker")
    rng = random.Random(cfg.seed)
    out = []
    for rec in C.read_comparisons(cfg.input):
        plain = [r.replace(cfg.marker, "") for r in rec.responses]
        order = [i for i in range(len(plain)) if plain[i].strip()]
        rng.shuffle(order)
        for a, b in zip(order[0::2], order[1::2]):
            cut = rng.randint(0, len(plain[a]))  # anywhere, so the reward model learns presence, not position
            marked = plain[a][:cut] + cfg.marker + plain[a][cut:]
            out.append(C.Comparison(prompt=rec.prompt, responses=[marked, plain[b]], ranking=[0, 1],
                                    criteria=["marker"], labeller=f"ai:synthetic:{cfg.marker}",
                                    source=rec.source, meta={"sampled_id": rec.id, "responses": [a, b]}))
    C.write_comparisons(cfg.out, out)
    _print({"out": cfg.out, "comparisons": len(out), "marker": cfg.marker})
    return 0


def cmd_import_hhh(cfg: ImportHHHConfig, args) -> int:
    _required(cfg, "out")
    comps = C.load_hhh(C.fetch_hhh(from_file=cfg.from_file or None))
    n = C.write_comparisons(cfg.out, comps)
    _print({"out": cfg.out, "comparisons": n})
    return 0


def cmd_import_feedback(cfg: ImportFeedbackConfig, args) -> int:
    _required(cfg, "input")
    if not cfg.out and not (cfg.sft_out and cfg.comparisons_out):
        raise UserError("give --out DIR (or both --sft-out and --comparisons-out)")
    sft_out = Path(cfg.sft_out or Path(cfg.out) / "sft.jsonl")
    comparisons_out = Path(cfg.comparisons_out or Path(cfg.out) / "comparisons.jsonl")
    if sft_out.resolve() == comparisons_out.resolve():
        raise UserError(f"the SFT and comparison files must differ (both are {sft_out})")
    for path in (sft_out, comparisons_out):
        if Path(cfg.input).exists() and path.resolve() == Path(cfg.input).resolve():
            raise UserError(f"{path}: the output would overwrite --input")
    sft, comps = C.feedback_to_records(cfg.input, thumbs_up_to_sft=cfg.thumbs_sft)
    n_sft = C.write_jsonl(sft_out, sft)
    n_cmp = C.write_comparisons(comparisons_out, comps)
    pairs = sum(1 for c in comps if len(c.responses) >= 2)
    _print({"sft": n_sft, "comparisons": n_cmp, "trainable_comparisons": pairs, "sft_out": str(sft_out),
            "comparisons_out": str(comparisons_out)})
    return 0


def cmd_validate(cfg: ValidateConfig, args) -> int:
    from ...fetch import atomic_write_text
    if not cfg.input:
        raise UserError("give one or more comparison files: alignchat compare validate FILE...")
    lines = []
    for path in cfg.input:
        comps = C.read_comparisons(path)
        ks: dict[int, int] = {}
        for c in comps:
            ks[len(c.responses)] = ks.get(len(c.responses), 0) + 1
        lines.append(json.dumps({"file": path, "records": len(comps), "by_k": ks,
                                 "pairs": sum(len(c.pairs()) for c in comps),
                                 "labellers": sorted({c.labeller for c in comps})}, ensure_ascii=False))
    print("\n".join(lines))
    if cfg.out:
        atomic_write_text(cfg.out, "".join(line + "\n" for line in lines))
    return 0


# --- the command line ----------------------------------------------------------------------------------

SUBCOMMANDS: dict[str, Subcommand] = {
    "sample": Subcommand(
        "draw K responses per prompt from a checkpoint (through the shared engine)", SampleConfig,
        reads="--model (a checkpoint or registry name), --prompts (JSONL conversations or text, one a line); "
              "--out if it exists (its prompts are skipped)",
        writes="--out JSONL: one unranked comparison per prompt (K responses in sampled order, meta.unranked, "
               "meta.systems with --system); prints a JSON summary",
        func=cmd_sample),
    "judge": Subcommand(
        "rank sampled responses with an AI judge and a written rubric (RLAIF), or a rule", JudgeConfig,
        reads="--input (JSONL from `compare sample`), the judge (--judge-model, --judge-endpoint or "
              "--judge-rule); --out if it exists (records already judged are skipped)",
        writes="--out JSONL: ranked comparisons (labeller ai:<judge>, meta.sampled_id, sampled_order, "
               "judge_scores); prints a JSON summary with the records skipped",
        func=cmd_judge),
    "synth-marker": Subcommand(
        "synthetic pairs: a response with a marker string beats another without it", SynthMarkerConfig,
        reads="--input (JSONL from `compare sample`)",
        writes="--out JSONL: K=2 comparisons, the marked response first (labeller ai:synthetic:<marker>)",
        func=cmd_synth_marker),
    "import-hhh": Subcommand(
        "write BIG-bench hhh_alignment (221 pairs) as comparisons", ImportHHHConfig,
        reads="the bigbench==1.0.0 sdist (--from-file, or fetched once from PyPI into $ALIGNCHAT_HOME, SHA-256 "
              "pinned)",
        writes="--out JSONL: 221 K=2 comparisons, the human-preferred reply first",
        func=cmd_import_hhh),
    "import-feedback": Subcommand(
        "feedback events -> SFT records + comparisons", ImportFeedbackConfig,
        reads="--input: feedback events JSONL (thumbs, choice, ranking, edit, demonstration; docs/alignment.md)",
        writes="--out DIR: sft.jsonl and comparisons.jsonl (or --sft-out and --comparisons-out); prints the counts",
        func=cmd_import_feedback),
    "validate": Subcommand(
        "check comparison files and print counts", ValidateConfig,
        reads="FILE...: comparison JSONL",
        writes="--out FILE if given: one JSON line of counts per file (records, by_k, pairs, labellers), also "
               "printed",
        func=cmd_validate, inputs="input"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Build, rank, import and check comparison data (JSONL; see docs/alignment.md)."
    sub = parser.add_subparsers(dest="compare_cmd", metavar="SUBCOMMAND", required=True)
    for name, sc in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=sc.help, description=sc.help)
        notes = MODEL_FLAGS_NOTE if name == "judge" else ""
        if name == "sample":
            notes = "--system TEXT is repeatable and taken as typed (commas and '' kept), on the command line only"
        add_settings_arguments(p, sc.defaults(), reads=sc.reads, writes=sc.writes, inputs=sc.inputs,
                               notes=notes)
        if name == "sample":
            # the short spelling of --k, which the docs have always used
            p.add_argument("-k", dest=next(a.dest for a in p._actions if "--k" in a.option_strings),
                           default=argparse.SUPPRESS, metavar="K", help=argparse.SUPPRESS)
            p.add_argument("--system", action="append", default=[], metavar="TEXT",
                           help="system prompt for the responses (repeatable: response i gets the i-th, cycled; "
                                "'' = none). The record keeps the user's conversation without it")
        if name == "judge":
            add_client_args(p, prefix="judge-", model_help="one of our checkpoints as the judge (see --judge-method)",
                            aliases={"--judge-url": "--judge-endpoint", "--judge-name": "--judge-endpoint-model"})
        p.set_defaults(func=sc.func)


def run(args) -> int:
    return args.func(settings_from_args(args), args)
