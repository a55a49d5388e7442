"""Feedback export: the chat UI's data as the SFT JSONL and comparison JSONL the training stages read.

- SFT (one conversation per line, loss on every assistant turn): labeller demonstrations
  (`source: "ui:demonstration"`) and answers a user corrected by editing (`source: "ui:edit"`: the prompt
  the answer continued, then the edited answer).
- Comparisons (one ranking per line, best first): K-way rankings from labelling mode (`ui:ranking`), decided
  compare-mode pairs (`ui:pair`, ranking [chosen, other]) and thumbs (`ui:thumb`: one response,
  `rating` +1/-1, ranking [0]).
- Record ids are stable (`ui-<kind>-<row id>`), so re-exporting gives the same lines and downstream
  deduplication works. `labeller` is `human:<username>`.
- Files are written atomically: an interrupted export never leaves a half file.
- `redact_pii=True` (`alignchat feedback export --redact-pii`) replaces e-mail addresses, phone and ID
  numbers in every string of every record with the cleaning stage's placeholders (`alignchat.safety.pii`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from sqlalchemy import func, select

from ..fetch import atomic_write_text
from .store import Demonstration, Feedback, Ranking, Store, User, iso

CRITERIA = ["helpful", "honest", "harmless"]


def _usernames(s) -> dict[int, str]:
    return {uid: name for uid, name in s.execute(select(User.id, User.username))}


def sft_records(store: Store) -> Iterator[dict]:
    with store.session() as s:
        names = _usernames(s)
        for d in s.scalars(select(Demonstration).order_by(Demonstration.id)):
            yield {"id": f"ui-demonstration-{d.id}",
                   "messages": list(d.prompt) + [{"role": "assistant", "content": d.response}],
                   "source": "ui:demonstration", "task": None, "format": "demonstration",
                   "meta": {"labeller": f"human:{names.get(d.user_id, '?')}", "created": iso(d.created)}}
        for fb in s.scalars(select(Feedback).where(Feedback.kind == "edit").order_by(Feedback.id)):
            original, edited = fb.responses[0], fb.responses[-1]
            if edited == original or not edited.strip():
                continue
            yield {"id": f"ui-edit-{fb.id}",
                   "messages": list(fb.prompt) + [{"role": "assistant", "content": edited}],
                   "source": "ui:edit", "task": None, "format": "dialogue" if len(fb.prompt) > 2 else "demonstration",
                   "meta": {"labeller": f"human:{names.get(fb.user_id, '?')}", "original": original,
                            "model": fb.model, "conversation_id": fb.conversation_id, "created": iso(fb.created)}}


def comparison_records(store: Store) -> Iterator[dict]:
    with store.session() as s:
        names = _usernames(s)
        for r in s.scalars(select(Ranking).order_by(Ranking.id)):
            yield {"id": f"ui-ranking-{r.id}", "prompt": list(r.prompt), "responses": list(r.responses),
                   "ranking": list(r.ranking), "criteria": list(r.criteria or CRITERIA),
                   "labeller": f"human:{names.get(r.user_id, '?')}", "source": "ui:ranking",
                   "created": iso(r.created), "meta": {"model": r.model}}
        for fb in s.scalars(select(Feedback).where(Feedback.kind.in_(["pair", "thumb"])).order_by(Feedback.id)):
            base = {"prompt": list(fb.prompt), "criteria": list(CRITERIA),
                    "labeller": f"human:{names.get(fb.user_id, '?')}", "created": iso(fb.updated or fb.created),
                    "meta": {"model": fb.model, "conversation_id": fb.conversation_id}}
            if fb.kind == "pair":
                if fb.chosen is None:
                    continue  # shown but never decided
                a = fb.responses
                yield {"id": f"ui-pair-{fb.id}", **base, "responses": list(a),
                       "ranking": [fb.chosen, 1 - fb.chosen], "source": "ui:pair"}
            elif fb.rating in (1, -1):
                yield {"id": f"ui-thumb-{fb.id}", **base, "responses": list(fb.responses[:1]),
                       "ranking": [0], "rating": fb.rating, "source": "ui:thumb",
                       "meta": {**base["meta"], "message_id": fb.message_id}}


def feedback_counts(store: Store) -> dict:
    with store.session() as s:
        out = {"demonstrations": s.scalar(select(func.count()).select_from(Demonstration)),
               "rankings": s.scalar(select(func.count()).select_from(Ranking))}
        for kind, n in s.execute(select(Feedback.kind, func.count()).group_by(Feedback.kind)):
            out[kind] = n
        return out


def export_feedback(store: Store, sft_path: str | Path, comparisons_path: str | Path,
                    redact_pii: bool = False) -> dict[str, int]:
    """Write both files (atomically); return how many records each holds."""
    from ..safety.pii import redact_obj
    clean = redact_obj if redact_pii else (lambda r: r)
    sft = [json.dumps(clean(r), ensure_ascii=False) for r in sft_records(store)]
    comps = [json.dumps(clean(r), ensure_ascii=False) for r in comparison_records(store)]
    atomic_write_text(sft_path, "".join(line + "\n" for line in sft), private=True)  # users' conversations
    atomic_write_text(comparisons_path, "".join(line + "\n" for line in comps), private=True)
    return {"sft": len(sft), "comparisons": len(comps)}
