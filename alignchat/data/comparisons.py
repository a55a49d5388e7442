"""Comparison data: the JSONL schema that joins human rankings, AI judges, the reward model, PPO and DPO.

One line is one ranking of K = 2..9 responses to one prompt (InstructGPT's unit of comparison data):

    {"id": str, "prompt": [messages], "responses": [str, ...], "ranking": [indices, best first],
     "criteria": ["helpful", "honest", "harmless", ...], "labeller": "human:<name>" | "ai:<judge>",
     "source": str, "created": ISO-8601 str, "meta": {}}

A single rated answer (thumbs up/down) is `responses` of length 1, `ranking: [0]` and `"rating": 1 | -1`.

Also here:
- `load_hhh`: BIG-bench `hhh_alignment` (221 chosen/rejected pairs in four subsets), fetched from the
  `bigbench==1.0.0` sdist through `alignchat.fetch` with pinned SHA-256s, as a held-out evaluation set.
- `feedback_to_records`: the loop from deployment back to training. Feedback events exported by the chat
  server (thumbs, choices between answers, rankings, edits, written demonstrations) become SFT records and
  comparisons with no conversion by hand; the event schema is documented in docs/alignment.md.
Every reader names the file and line of a bad record and keeps reading nothing past it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..errors import UserError
from ..fetch import atomic_write_text, fetch, is_fetched, pinned

ROLES = ("system", "user", "assistant")
MAX_RESPONSES = 9
RUBRIC_CRITERIA = ("helpful", "honest", "harmless", "relevance", "informativeness")
SFT_FORMATS = ("zero-shot", "few-shot", "zero-shot-cot", "few-shot-cot", "dialogue", "demonstration")


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def content_id(*parts: Any) -> str:
    """A stable id from content, so the same comparison imported twice is recognisably the same."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class Comparison:
    prompt: list[dict[str, str]]
    responses: list[str]
    ranking: list[int]
    criteria: list[str] = field(default_factory=lambda: ["helpful", "honest", "harmless"])
    labeller: str = "human:unknown"
    source: str = "unknown"
    created: str = field(default_factory=now_iso)
    meta: dict = field(default_factory=dict)
    id: str = ""
    rating: int | None = None  # only for single rated answers

    def __post_init__(self):
        if not self.id:
            self.id = content_id(self.prompt, self.responses, self.ranking)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["rating"] is None:
            del d["rating"]
        order = ["id", "prompt", "responses", "ranking", "rating", "criteria", "labeller", "source", "created", "meta"]
        return {k: d[k] for k in order if k in d}

    def pairs(self) -> list[tuple[int, int]]:
        """(winner, loser) response indices of every pair the ranking implies."""
        r = self.ranking
        return [(r[i], r[j]) for i in range(len(r)) for j in range(i + 1, len(r))]


# --- validation ----------------------------------------------------------------------------------------

def validate_messages(messages: Any, where: str, what: str = "prompt") -> list[dict[str, Any]]:
    """A stored conversation: the chat checks of `tokenizer.validate_messages` (tool calls and tool results
    included: `alignchat.tools_format`), plus plain-string contents (data files hold text, not the API's
    content parts; an assistant message with tool calls may have null content); errors name `where` and
    the field."""
    from ..tokenizer import validate_messages as validate_chat
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: '{what}' must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("content") is None and m.get("tool_calls"):
            continue
        if isinstance(m, dict) and not isinstance(m.get("content"), str):
            raise UserError(f"{where}: {what}: message {i} content must be a string, got "
                            f"{json.dumps(m.get('content'), ensure_ascii=False)[:120]}")
    try:
        return validate_chat(messages)
    except UserError as e:
        raise UserError(f"{where}: {what}: {e}") from None


def validate_comparison(obj: Any, where: str) -> Comparison:
    """Check one decoded JSON object against the comparison schema; raise UserError naming `where`."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a comparison must be a JSON object")
    for key in ("prompt", "responses", "ranking"):
        if key not in obj:
            raise UserError(f"{where}: missing field '{key}'")
    prompt = validate_messages(obj["prompt"], where)
    if prompt[-1]["role"] != "user":
        raise UserError(f"{where}: the prompt must end with a user message (the responses answer it)")
    responses = obj["responses"]
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise UserError(f"{where}: 'responses' must be a list of strings")
    if not 1 <= len(responses) <= MAX_RESPONSES:
        raise UserError(f"{where}: 'responses' has {len(responses)} entries; K must be 2..{MAX_RESPONSES} "
                        f"(or 1 with a 'rating')")
    ranking = obj["ranking"]
    if not isinstance(ranking, list) or sorted(ranking) != list(range(len(responses))) \
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ranking):
        raise UserError(f"{where}: 'ranking' must be a permutation of 0..{len(responses) - 1} (best first), "
                        f"got {ranking!r}")
    rating = obj.get("rating")
    if len(responses) == 1:
        if rating not in (1, -1):
            raise UserError(f"{where}: a single response needs \"rating\": 1 or -1")
    elif rating is not None:
        raise UserError(f"{where}: 'rating' is only for a single rated response")
    criteria = obj.get("criteria", ["helpful", "honest", "harmless"])
    if not isinstance(criteria, list) or not all(isinstance(c, str) for c in criteria):
        raise UserError(f"{where}: 'criteria' must be a list of strings")
    labeller = obj.get("labeller", "human:unknown")
    if not isinstance(labeller, str) or not re.match(r"^(human|ai):.+", labeller):
        raise UserError(f"{where}: 'labeller' must look like 'human:<name>' or 'ai:<judge>', got {labeller!r}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise UserError(f"{where}: 'meta' must be an object")
    created = obj.get("created") or now_iso()
    try:
        datetime.fromisoformat(str(created).replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{where}: 'created' is not an ISO-8601 time: {created!r}") from None
    return Comparison(prompt=prompt, responses=list(responses), ranking=list(ranking), criteria=list(criteria),
                      labeller=labeller, source=str(obj.get("source", "unknown")), created=str(created),
                      meta=meta, id=str(obj.get("id") or ""), rating=rating)


def validate_sft_record(obj: Any, where: str) -> dict[str, Any]:
    """Check one SFT/demonstration record (alignchat's shared schema); return it normalised."""
    if not isinstance(obj, dict):
        raise UserError(f"{where}: an SFT record must be a JSON object")
    messages = validate_messages(obj.get("messages"), where, "messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: an SFT record needs at least one assistant message to learn from")
    fmt = obj.get("format") or "dialogue"
    if fmt not in SFT_FORMATS:
        raise UserError(f"{where}: 'format' must be one of {', '.join(SFT_FORMATS)}, got {fmt!r}")
    from ..tools_format import validate_tools
    try:  # the tools offered in the conversation (OpenAI's list), rendered as serving renders them
        tools = validate_tools(obj.get("tools"))
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    rec = {"id": str(obj.get("id") or content_id(messages)), "messages": messages,
           "source": str(obj.get("source", "unknown")), "task": obj.get("task"), "format": fmt,
           "meta": obj.get("meta") or {}}
    if tools:
        rec["tools"] = tools
    return rec


# --- JSONL I/O -----------------------------------------------------------------------------------------

def iter_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ("FILE:LINE", object) for every non-blank line; a line that is not JSON is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def read_comparisons(path: str | Path, min_responses: int = 1) -> list[Comparison]:
    """Read and validate a comparison JSONL file. `min_responses=2` skips single rated answers."""
    out = [validate_comparison(obj, where) for where, obj in iter_jsonl(path)]
    return [c for c in out if len(c.responses) >= min_responses]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename); return how many were written."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def write_comparisons(path: str | Path, comparisons: Iterable[Comparison]) -> int:
    return write_jsonl(path, (c.to_dict() for c in comparisons))


def read_sft(path: str | Path) -> list[dict[str, Any]]:
    return [validate_sft_record(obj, where) for where, obj in iter_jsonl(path)]


def split_comparisons(comparisons: list[Comparison], held_out: float, seed: int = 0
                      ) -> tuple[list[Comparison], list[Comparison]]:
    """Split by prompt (never one prompt on both sides), deterministically from the prompt's content."""
    def bucket(c: Comparison) -> float:
        h = hashlib.sha256(f"{seed}:{json.dumps(c.prompt, ensure_ascii=False)}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2 ** 64
    train = [c for c in comparisons if bucket(c) >= held_out]
    test = [c for c in comparisons if bucket(c) < held_out]
    return train, test


# --- BIG-bench hhh_alignment ---------------------------------------------------------------------------

HHH_SUBSETS = ("harmless", "helpful", "honest", "other")
_HHH_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/hhh_alignment"
HHH_ARTIFACT = pinned("bigbench==1.0.0", f"{_HHH_PREFIX}/")  # Askell et al. 2021: 221 chosen/rejected replies
_TURN = re.compile(r"\n+\s*(Human|Assistant):")


def fetch_hhh(from_file: str | Path | None = None) -> Path:
    """Make the four hhh_alignment task files present and verified; return their directory.

    The sdist is 358 MB and is downloaded once: its pinned files (these and the instruction builder's
    BIG-bench tasks) are kept in the artifact store and shared by every stage that reads them.
    """
    paths = fetch(HHH_ARTIFACT, from_file=from_file)
    return next(iter(paths.values())).parent.parent


def hhh_fetched() -> bool:
    """Whether the hhh_alignment files are already in the artifact store (so reading them needs no download)."""
    return is_fetched(HHH_ARTIFACT)


def hhh_dialogue(text: str) -> list[dict[str, str]]:
    """BIG-bench's "…\\n\\nAssistant: …\\n\\nHuman: …" input (first turn unlabelled) -> chat messages."""
    parts = _TURN.split(text)
    messages = [{"role": "user", "content": parts[0].strip()}]
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def load_hhh(task_dir: str | Path | None = None) -> list[Comparison]:
    """hhh_alignment as comparisons (K=2, the human-preferred reply ranked first), fetched if needed."""
    task_dir = Path(task_dir) if task_dir is not None else fetch_hhh()
    out = []
    for subset in HHH_SUBSETS:
        path = task_dir / subset / "task.json"
        try:
            task = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: cannot read the BIG-bench task ({e})") from None
        for n, example in enumerate(task["examples"]):
            scored = sorted(example["target_scores"].items(), key=lambda kv: -kv[1])
            prompt = hhh_dialogue(example["input"])
            if prompt[-1]["role"] != "user":
                raise UserError(f"{path}: example {n} does not end with a human turn")
            responses = [text.strip() for text, _ in scored]
            out.append(Comparison(prompt=prompt, responses=responses, ranking=list(range(len(responses))),
                                  criteria=[subset if subset != "other" else "helpful"],
                                  labeller="human:bigbench-hhh", source=f"bigbench/hhh_alignment/{subset}",
                                  created="2021-12-01T00:00:00+00:00", meta={"subset": subset, "index": n}))
    return out


# --- chat feedback -> training data --------------------------------------------------------------------

FEEDBACK_TYPES = ("thumbs", "choice", "ranking", "edit", "demonstration")


def _sft(messages: list[dict[str, str]], source: str, fmt: str, meta: dict) -> dict[str, Any]:
    return {"id": content_id(messages), "messages": messages, "source": source, "task": None, "format": fmt,
            "meta": meta}


def feedback_event_to_records(event: Any, where: str, thumbs_up_to_sft: bool = True
                              ) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """One exported feedback event -> (SFT records, comparisons). See docs/alignment.md for the schema."""
    if not isinstance(event, dict):
        raise UserError(f"{where}: a feedback event must be a JSON object")
    kind = event.get("type")
    if kind is None and "ranking" in event and "prompt" in event:
        return [], [validate_comparison(event, where)]  # already a comparison (the UI's ranking mode)
    if kind not in FEEDBACK_TYPES:
        raise UserError(f"{where}: 'type' must be one of {', '.join(FEEDBACK_TYPES)}, got {kind!r}")
    user = str(event.get("user") or "unknown")
    common = dict(labeller=f"human:{user}", source=f"feedback:{kind}", created=str(event.get("created") or now_iso()),
                  meta={k: event[k] for k in ("id", "model", "conversation_id") if k in event})
    if kind == "demonstration":
        return [validate_sft_record({**event, "format": "demonstration", "source": "feedback:demonstration"},
                                    where)], []
    prompt = validate_messages(event.get("conversation"), where, "conversation")
    if prompt[-1]["role"] != "user":
        raise UserError(f"{where}: 'conversation' must end with the user message that was answered")
    crit = event.get("criteria") or ["helpful", "honest", "harmless"]

    def as_sft(answer: str) -> dict[str, Any]:
        return _sft(prompt + [{"role": "assistant", "content": answer}], common["source"], "dialogue",
                    dict(common["meta"]))

    if kind == "thumbs":
        responses = event.get("responses") or ([event["response"]] if isinstance(event.get("response"), str) else None)
        c = validate_comparison({"prompt": prompt, "responses": responses, "ranking": [0],
                                 "rating": event.get("rating"), "criteria": crit, **common}, where)
        return ([as_sft(c.responses[0])] if thumbs_up_to_sft and c.rating == 1 else []), [c]
    if kind == "edit":
        original, edited = event.get("original"), event.get("edited")
        if not isinstance(original, str) or not isinstance(edited, str) or not edited.strip():
            raise UserError(f"{where}: an edit needs 'original' and a non-empty 'edited' string")
        comps = [] if edited.strip() == original.strip() else [validate_comparison(
            {"prompt": prompt, "responses": [edited, original], "ranking": [0, 1], "criteria": crit, **common}, where)]
        return [as_sft(edited)], comps
    responses = event.get("responses")
    if kind == "choice":
        chosen = event.get("chosen")
        if not isinstance(responses, list) or not isinstance(chosen, int) or not 0 <= chosen < len(responses):
            raise UserError(f"{where}: a choice needs 'responses' and 'chosen' (an index into them)")
        # choosing one of K says only "chosen beats each other one": K-1 pairs, no order among the rest
        comps = [validate_comparison({"prompt": prompt, "responses": [responses[chosen], r], "ranking": [0, 1],
                                      "criteria": crit, **common}, where)
                 for i, r in enumerate(responses) if i != chosen]
        return [as_sft(responses[chosen])], comps
    c = validate_comparison({"prompt": prompt, "responses": responses, "ranking": event.get("ranking"),
                             "criteria": crit, **common}, where)
    return [as_sft(c.responses[c.ranking[0]])], [c]


def pair_ratings(comparisons: list[Comparison]) -> list[Comparison]:
    """Thumbs-up and thumbs-down answers to the same prompt become (up, down) comparison pairs."""
    by_prompt: dict[str, list[Comparison]] = {}
    for c in comparisons:
        if c.rating is not None:
            by_prompt.setdefault(json.dumps(c.prompt, ensure_ascii=False, sort_keys=True), []).append(c)
    out = []
    for group in by_prompt.values():
        ups = [c for c in group if c.rating == 1]
        downs = [c for c in group if c.rating == -1]
        for u in ups:
            for d in downs:
                if u.responses[0] != d.responses[0]:
                    out.append(Comparison(prompt=u.prompt, responses=[u.responses[0], d.responses[0]],
                                          ranking=[0, 1], criteria=u.criteria, labeller=u.labeller,
                                          source="feedback:thumbs-pair", meta={"from": [u.id, d.id]}))
    return out


def read_training_comparisons(paths: Iterable[str | Path]) -> list[Comparison]:
    """Every K>=2 comparison in the files, plus pairs made from thumbs up/down on the same prompt.

    This is what `rm` and `dpo` train on, so a feedback export (`alignchat feedback export`) can be passed
    to them as it is."""
    comps = [c for p in paths for c in read_comparisons(p)]
    unique = {c.id: c for c in [c for c in comps if len(c.responses) >= 2] + pair_ratings(comps)}
    return list(unique.values())


def feedback_to_records(path: str | Path, thumbs_up_to_sft: bool = True
                        ) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """Convert a feedback export (JSONL) to (SFT records, comparisons), deduplicated by id.

    Single ratings are kept as K=1 comparisons and, where one prompt has both an up- and a down-rated
    answer, also paired into K=2 comparisons the reward model can train on.
    """
    sft: dict[str, dict] = {}
    comps: dict[str, Comparison] = {}
    for where, event in iter_jsonl(path):
        s, c = feedback_event_to_records(event, where, thumbs_up_to_sft)
        sft.update((r["id"], r) for r in s)
        comps.update((x.id, x) for x in c)
    comps.update((x.id, x) for x in pair_ratings(list(comps.values())))
    return list(sft.values()), list(comps.values())
