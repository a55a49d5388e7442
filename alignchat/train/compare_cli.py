"""`alignchat compare`: build, import and check comparison data (the input of `rm`, `dpo` and evaluation).

Subcommands:
- `sample`: draw K responses per prompt from a checkpoint through the shared engine (`alignchat.engine`),
  each with its own seed, and write unranked records (`ranking` in sampled order, `meta.unranked: true`).
  `--system` (repeatable) gives response i the i-th system prompt, cycled, so one ranking can hold replies
  written under contrasting instructions (say, a careful assistant and a careless one); the record's prompt
  is the user's conversation without it, which is what the reward model sees.
- `judge`: rank each record's responses with an AI judge following a written rubric (helpful, honest,
  harmless, relevance, informativeness): RLAIF. The judge is
  * one of our checkpoints (`--judge-model`), in one of two ways (`--judge-method`):
    - `contrast` (default): how much more likely the judge finds the reply when it is told to follow the
      rubric than when it is told to break it, per reply token:
      [log p(reply | rubric persona) − log p(reply | rubric-breaking persona)] / tokens. A small model
      cannot grade well but can tell which instructions a reply is consistent with;
    - `yesno`: the judge's log p("Yes") − log p("No") to "does this reply meet the rubric?";
    neither parses free text;
  * any OpenAI-compatible endpoint (`--judge-endpoint URL [--judge-endpoint-model NAME]`, through
    `alignchat.client`; the key is read from the variable `--api-key-env` names): the judge is asked for
    "RANKING: 2 > 1 > 3"; a reply that cannot be parsed is retried, then the record is skipped and counted;
  * a checkable property (`--judge-rule REGEX`): more matches rank higher, ties keep the sampled order.
    This is how the documented end-to-end run builds a preference that can be measured.
- `import-hhh`: write BIG-bench `hhh_alignment` as comparisons (held-out evaluation set).
- `import-feedback`: turn the chat server's feedback export into SFT records and comparisons.
- `validate`: check a comparison file and print counts.
Long commands show a progress bar and can be resumed: records already in the output file are skipped.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..client.cli import add_client_args
from ..data import comparisons as C
from ..errors import UserError

RUBRIC = """You are judging an AI assistant's reply to a user. A good reply is:
1. helpful: it does what the user asked, well;
2. honest: it is accurate and says when it is unsure; it does not make things up;
3. harmless: it refuses dangerous or unethical requests politely and is never toxic;
4. relevant: it addresses this user's message, not something else;
5. informative: it gives the user useful, specific content rather than filler.
Replies in Chinese are judged by the same standard (回答用中文时同样适用以上标准)."""

RUBRIC_CRITERIA = list(C.RUBRIC_CRITERIA)


# The contrast judge's two personas: the rubric, and the rubric broken on every point.
RUBRIC_PERSONA = ("You are a helpful, honest and harmless AI assistant. You answer accurately, admit when you do "
                  "not know, and politely refuse dangerous or unethical requests.")
ANTI_RUBRIC_PERSONA = ("You are an AI assistant that is unhelpful, dishonest and harmful. You make up facts, you help "
                       "with dangerous or unethical requests, and you give vague, irrelevant answers.")


def _conversation_text(prompt: list[dict]) -> str:
    return "\n".join(f"{m['role'].upper()}: {m['content']}" for m in prompt)


# --- sample --------------------------------------------------------------------------------------------

def read_prompts(path: str) -> list[tuple[str, list[dict]]]:
    """Prompts from JSONL: {"prompt": [messages]} / {"messages": [...]} (a trailing assistant turn is dropped)
    / {"prompt": "text"}; or plain text, one prompt per line."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{path}: no such file")
    out = []
    if p.suffix != ".jsonl":
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                out.append((f"{path}:{n}", [{"role": "user", "content": line.strip()}]))
        return out
    for where, obj in C.iter_jsonl(p):
        msgs = obj.get("prompt", obj.get("messages")) if isinstance(obj, dict) else None
        if isinstance(msgs, str):
            msgs = [{"role": "user", "content": msgs}]
        msgs = C.validate_messages(msgs, where)
        while msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise UserError(f"{where}: the prompt must end with a user message")
        out.append((where, msgs))
    return out


def _with_system(prompt: list[dict], system: str | None) -> list[dict]:
    """The prompt with `system` as its system message (replacing one it has); None or "" leaves it as it is."""
    if not system:
        return prompt
    return [{"role": "system", "content": system}] + [m for m in prompt if m["role"] != "system"]


def sample_responses(model_path: str, prompts: list[list[dict]], k: int, max_tokens: int, temperature: float,
                     top_p: float, seed: int, batch: int = 16, progress: bool = True,
                     systems: list[str] | None = None, device: str | None = None, dtype: str | None = None,
                     loaded=None) -> list[list[str]]:
    """K responses per prompt; response i is written under systems[i % len(systems)] when systems are given."""
    from ..commands.common import load_for_inference
    from ..engine import Engine, SamplingParams
    model, tok = loaded or load_for_inference(model_path, device, dtype)[:2]
    engine = Engine(model, tok, max_batch=batch)
    systems = systems or [None]
    flat_ids = [tok.render_chat(_with_system(p, systems[i % len(systems)]), add_generation_prompt=True).ids
                for p in prompts for i in range(k)]
    params = [SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                             seed=seed * 1_000_003 + n) for n in range(len(flat_ids))]
    gens = engine.generate(flat_ids, params, progress=progress)
    return [[g.text.strip() for g in gens[i * k:(i + 1) * k]] for i in range(len(prompts))]


def cmd_sample(args) -> int:
    if not 2 <= args.k <= C.MAX_RESPONSES:
        raise UserError(f"-k must be 2..{C.MAX_RESPONSES} (InstructGPT used 4..9)")
    prompts = read_prompts(args.prompts)
    systems = list(args.system) or None
    existing = C.read_comparisons(args.out) if Path(args.out).exists() else []
    done = {json.dumps(c.prompt, sort_keys=True) for c in existing}
    todo = [p for _, p in prompts if json.dumps(p, sort_keys=True) not in done]
    from ..commands.common import load_for_inference
    loaded = load_for_inference(args.model, args.device, args.dtype)[:2] if todo else None
    new = []
    for start in range(0, len(todo), args.chunk):  # write as we go, so an interrupted run keeps its work
        chunk = todo[start:start + args.chunk]
        responses = sample_responses(args.model, chunk, args.k, args.max_tokens, args.temperature, args.top_p,
                                     args.seed + start, batch=args.batch, progress=not args.quiet,
                                     systems=systems, loaded=loaded)
        for p, rs in zip(chunk, responses):
            meta = {"unranked": True, "model": args.model, "temperature": args.temperature}
            if systems:
                meta["systems"] = [systems[i % len(systems)] or None for i in range(len(rs))]
            new.append(C.Comparison(prompt=p, responses=rs, ranking=list(range(len(rs))), labeller="ai:unranked",
                                    source=f"sample:{args.model}", criteria=[], meta=meta))
        C.write_comparisons(args.out, existing + new)
    print(json.dumps({"out": args.out, "new": len(new), "skipped_already_sampled": len(prompts) - len(todo),
                      "k": args.k}))
    return 0


# --- judges --------------------------------------------------------------------------------------------

class RuleJudge:
    """Rank by the number of matches of a regular expression (a property that can be checked).

    Equal counts express no preference, so only one response per distinct count is kept (the first
    sampled); a record whose responses all tie yields no comparison. This keeps every pair a true label.
    """

    def __init__(self, pattern: str):
        try:
            self.regex = re.compile(pattern)
        except re.error as e:
            raise UserError(f"--judge-rule: bad regular expression {pattern!r}: {e}") from None
        self.name = f"rule:{pattern}"

    def rank(self, prompt, responses) -> list[int]:
        counts = [len(self.regex.findall(r)) for r in responses]
        first_of_count = {}
        for i, c in enumerate(counts):
            first_of_count.setdefault(c, i)
        return [first_of_count[c] for c in sorted(first_of_count, reverse=True)]


class ModelJudge:
    """One of our checkpoints as the judge; `method` is "contrast" or "yesno" (see the module docstring).

    `model` is a model name or path (loaded through `alignchat.client.LocalClient`) or a client already made;
    both methods need log-likelihoods of replies, which only a local model gives."""

    METHODS = ("contrast", "yesno")

    def __init__(self, model, method: str = "contrast", device: str | None = "auto", dtype: str | None = None,
                 batch: int = 16):
        from ..client import ModelClient, make_client
        if method not in self.METHODS:
            raise UserError(f"--judge-method must be one of {', '.join(self.METHODS)}, not {method!r}")
        self.client = model if isinstance(model, ModelClient) else make_client(
            model=str(model), device=device, dtype=dtype, max_batch=8, score_batch=batch)
        if self.client.kind != "local":
            raise UserError("a log-likelihood judge needs a local model (--judge-model); an endpoint judges by "
                            "ranking (--judge-endpoint)")
        self.method = method
        self.name = f"model:{self.client.name}" + ("" if method == "yesno" else f":{method}")

    def scores(self, prompt, responses) -> list[float]:
        return self.scores_many([(prompt, responses)])[0]

    def scores_many(self, records) -> list[list[float]]:
        """Scores of many (prompt, responses) records, batched together."""
        if self.method == "contrast":
            pairs = [(_with_system(prompt, system), r or " ") for prompt, responses in records for r in responses
                     for system in (RUBRIC_PERSONA, ANTI_RUBRIC_PERSONA)]
            ll = self.client.reply_loglikelihood(pairs)
            flat = [(ll[2 * n].logprob - ll[2 * n + 1].logprob) / max(1, ll[2 * n + 1].tokens)
                    for n in range(len(ll) // 2)]
        else:
            items = []
            for prompt, responses in records:
                for r in responses:
                    question = (f"{RUBRIC}\n\nConversation:\n{_conversation_text(prompt)}\n\nAssistant's reply:\n"
                                f"{r}\n\nDoes the reply meet all five criteria? Answer Yes or No.")
                    items.append(([{"role": "user", "content": question}], ["Yes", "No"]))
            # one pass over each (long) rubric context, shared by both answers
            ll = self.client.loglikelihood_choices(items)
            flat = [y.logprob - n.logprob for y, n in ll]
        out, i = [], 0
        for _, responses in records:
            out.append(flat[i:i + len(responses)])
            i += len(responses)
        return out

    @staticmethod
    def order(scores: list[float]) -> list[int]:
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))

    def rank(self, prompt, responses) -> list[int]:
        return self.order(self.scores(prompt, responses))


class EndpointJudge:
    """Any OpenAI-compatible chat endpoint (an `alignchat.client.EndpointClient`), asked for a ranking line."""

    RANKING = re.compile(r"RANKING:\s*([0-9][0-9\s>,]*)", re.IGNORECASE)

    def __init__(self, client, retries: int = 2):
        from ..client import GREEDY
        self.client, self.retries = client, retries
        self.sampling = GREEDY.but(max_tokens=512)

    @property
    def name(self) -> str:
        return f"endpoint:{self.client.model}"

    def ask(self, prompt, responses) -> str:
        listing = "\n\n".join(f"[{i + 1}]\n{r}" for i, r in enumerate(responses))
        content = (f"{RUBRIC}\n\nConversation:\n{_conversation_text(prompt)}\n\nCandidate replies:\n\n{listing}\n\n"
                   f"Rank all {len(responses)} replies from best to worst. Think briefly, then end with one line "
                   f"exactly like: RANKING: 2 > 1 > 3")
        return self.client.chat([{"role": "user", "content": content}], self.sampling).text

    @classmethod
    def parse(cls, text: str, k: int) -> list[int] | None:
        found = cls.RANKING.findall(text)
        if not found:
            return None
        nums = [int(x) - 1 for x in re.findall(r"\d+", found[-1])]
        return nums if sorted(nums) == list(range(k)) else None

    def rank(self, prompt, responses) -> list[int] | None:
        for _ in range(self.retries + 1):
            ranking = self.parse(self.ask(prompt, responses), len(responses))
            if ranking is not None:
                return ranking
        return None


def make_judge(args):
    from ..client.cli import client_from_args, model_of
    chosen = [x for x in (model_of(args, "judge-"), args.judge_endpoint, args.judge_rule) if x]
    if len(chosen) != 1:
        raise UserError("choose exactly one judge: --judge-model CKPT, --judge-endpoint URL or --judge-rule REGEX")
    if args.judge_rule:
        return RuleJudge(args.judge_rule)
    client = client_from_args(args, "judge-", max_batch=8)
    if client.kind == "endpoint":
        return EndpointJudge(client)
    return ModelJudge(client, method=args.judge_method)


def cmd_judge(args) -> int:
    from tqdm.auto import tqdm
    records = C.read_comparisons(args.input, min_responses=2)
    judge = make_judge(args)
    out = C.read_comparisons(args.out) if Path(args.out).exists() else []
    done = {c.meta.get("sampled_id") for c in out}
    todo = [rec for rec in records if rec.id not in done]
    unparseable = no_preference = 0
    bar = tqdm(total=len(todo), desc="judge", disable=args.quiet)
    for start in range(0, len(todo), args.save_every):  # write as we go: a rerun skips what is judged
        chunk = todo[start:start + args.save_every]
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
        C.write_comparisons(args.out, out)
        bar.update(len(chunk))
    bar.close()
    C.write_comparisons(args.out, out)
    print(json.dumps({"out": args.out, "ranked": len(out), "unparseable_skipped": unparseable,
                      "no_preference_skipped": no_preference, "judge": judge.name}))
    return 0


def cmd_synth_marker(args) -> int:
    """Synthetic comparisons for a checkable preference: a response with the marker beats a *different*
    response to the same prompt without it.

    Pairing different responses (not one response with and without the marker) makes the marker the only
    feature that separates winners from losers across the data, so the reward model learns it rather than
    the incidental features of the texts.
    """
    import random
    rng = random.Random(args.seed)
    out = []
    for rec in C.read_comparisons(args.input):
        plain = [r.replace(args.marker, "") for r in rec.responses]
        order = [i for i in range(len(plain)) if plain[i].strip()]
        rng.shuffle(order)
        for a, b in zip(order[0::2], order[1::2]):
            cut = rng.randint(0, len(plain[a]))  # anywhere, so the reward model learns presence, not position
            marked = plain[a][:cut] + args.marker + plain[a][cut:]
            out.append(C.Comparison(prompt=rec.prompt, responses=[marked, plain[b]], ranking=[0, 1],
                                    criteria=["marker"], labeller=f"ai:synthetic:{args.marker}",
                                    source=rec.source, meta={"sampled_id": rec.id, "responses": [a, b]}))
    C.write_comparisons(args.out, out)
    print(json.dumps({"out": args.out, "comparisons": len(out), "marker": args.marker}, ensure_ascii=False))
    return 0


# --- imports and checks --------------------------------------------------------------------------------

def cmd_import_hhh(args) -> int:
    comps = C.load_hhh(C.fetch_hhh(from_file=args.from_file))
    n = C.write_comparisons(args.out, comps)
    print(json.dumps({"out": args.out, "comparisons": n}))
    return 0


def cmd_import_feedback(args) -> int:
    sft, comps = C.feedback_to_records(args.input, thumbs_up_to_sft=not args.no_thumbs_sft)
    n_sft = C.write_jsonl(args.sft_out, sft)
    n_cmp = C.write_comparisons(args.comparisons_out, comps)
    pairs = sum(1 for c in comps if len(c.responses) >= 2)
    print(json.dumps({"sft": n_sft, "comparisons": n_cmp, "trainable_comparisons": pairs,
                      "sft_out": args.sft_out, "comparisons_out": args.comparisons_out}))
    return 0


def cmd_validate(args) -> int:
    comps = C.read_comparisons(args.input)
    ks: dict[int, int] = {}
    for c in comps:
        ks[len(c.responses)] = ks.get(len(c.responses), 0) + 1
    print(json.dumps({"file": args.input, "records": len(comps), "by_k": ks,
                      "pairs": sum(len(c.pairs()) for c in comps),
                      "labellers": sorted({c.labeller for c in comps})}, ensure_ascii=False))
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Build, rank, import and check comparison data (JSONL; see docs/alignment.md)."
    sub = parser.add_subparsers(dest="compare_cmd", metavar="SUBCOMMAND", required=True)

    s = sub.add_parser("sample", help="draw K responses per prompt from a checkpoint (through the shared engine)")
    s.add_argument("--model", required=True, help="checkpoint or registry name to sample from (usually the SFT model)")
    s.add_argument("--prompts", required=True, help="JSONL of {\"prompt\": [messages]} or a text file, one prompt a line")
    s.add_argument("--out", required=True, help="output JSONL (unranked comparisons); existing prompts are skipped")
    s.add_argument("-k", "--k", type=int, default=4, help="responses per prompt, K = 2..9 (InstructGPT: 4..9; default 4)")
    s.add_argument("--max-tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (>0 for diverse responses)")
    s.add_argument("--top-p", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--system", action="append", default=[], metavar="TEXT",
                   help="system prompt for the responses (repeatable: response i gets the i-th, cycled; '' = none). "
                        "The record keeps the user's conversation without it")
    s.add_argument("--batch", type=int, default=16, help="engine slots: responses decoded together (default 16)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    s.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: float32 on CPU, bfloat16 on CUDA)")
    s.add_argument("--chunk", type=int, default=64, help="prompts per write (progress survives interruption)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    j = sub.add_parser("judge", help="rank sampled responses with an AI judge and a written rubric (RLAIF)")
    j.add_argument("--input", required=True, help="JSONL from `compare sample`")
    j.add_argument("--out", required=True, help="output comparison JSONL; already-judged records are skipped")
    add_client_args(j, prefix="judge-", model_help="one of our checkpoints as the judge (see --judge-method)",
                    aliases={"--judge-url": "--judge-endpoint", "--judge-name": "--judge-endpoint-model"})
    j.add_argument("--judge-method", choices=ModelJudge.METHODS, default="contrast",
                   help="for --judge-model: contrast = per-token log p(reply | rubric persona) - log p(reply | "
                        "rubric-breaking persona) (default); yesno = log P(Yes) - log P(No) to 'does the reply meet "
                        "the rubric?'")
    j.add_argument("--judge-rule", help="regular expression: responses with more matches rank higher")
    j.add_argument("--save-every", type=int, default=32, help="records judged per write (default 32)")
    j.add_argument("--quiet", action="store_true")
    j.set_defaults(func=cmd_judge)

    m = sub.add_parser("synth-marker", help="synthetic pairs: a response with a marker string beats another without it")
    m.add_argument("--input", required=True, help="JSONL from `compare sample`")
    m.add_argument("--out", required=True)
    m.add_argument("--marker", required=True, help="the preferred string, e.g. '!' or ' please'")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_synth_marker)

    h = sub.add_parser("import-hhh", help="write BIG-bench hhh_alignment (221 pairs) as comparisons")
    h.add_argument("--out", required=True)
    h.add_argument("--from-file", help="a bigbench-1.0.0.tar.gz downloaded elsewhere (else fetched from PyPI, 358 MB)")
    h.set_defaults(func=cmd_import_hhh)

    f = sub.add_parser("import-feedback", help="chat feedback export -> SFT records + comparisons")
    f.add_argument("--input", required=True, help="feedback export JSONL from the server")
    f.add_argument("--sft-out", required=True)
    f.add_argument("--comparisons-out", required=True)
    f.add_argument("--no-thumbs-sft", action="store_true", help="do not turn thumbs-up answers into SFT records")
    f.set_defaults(func=cmd_import_feedback)

    v = sub.add_parser("validate", help="check a comparison file and print counts")
    v.add_argument("input")
    v.set_defaults(func=cmd_validate)


def run(args) -> int:
    return args.func(args)
