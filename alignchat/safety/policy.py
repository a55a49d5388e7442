"""The moderation policy: per category and per direction (user input, model output) block, flag or allow.

A deployment writes it as TOML or YAML (read with `alignchat.settings.load_config_file`) and passes it
to `alignchat serve --moderation-policy FILE`:

    enabled = true
    block_at = 0.75        # a "block" category scoring below this is only flagged
    [input]                # a user's message, before the model sees it
    default = "block"      # every category not named below
    harassment = "flag"
    [output]               # the model's reply, checked while it streams
    default = "block"
    [thresholds]           # optional: a category's score at or above which it counts as flagged
    violence = 0.6

Notable choices:
- The defaults (`DEFAULT_INPUT`, `DEFAULT_OUTPUT`) have moderation on: requests for illicit, violent,
  hateful, sexual or self-harm content are blocked before generation; plain harassment (insults) on the
  input is only flagged, since users quote insults to ask about them. Every category is blocked on
  the output. A block needs a confident score (`block_at`, default `DEFAULT_BLOCK_AT`): a category flagged
  below it is flagged, not blocked, because the small classifier's look-alike false positives ("how do I kill
  a stuck process", a question about RLHF) score near its flag threshold while clear requests score well
  above it. Set `block_at = 0` to block at the flag threshold.
- A name outside OpenAI's 13 categories, an action other than block/flag/allow, a threshold outside
  [0, 1] or an unknown section is a `UserError` naming it: a typo never silently turns a block off.
- A parent category's action applies to its sub-categories unless they are named themselves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .data import CATEGORIES, PARENT

ACTIONS = ("block", "flag", "allow")
DIRECTIONS = ("input", "output")
DEFAULT_INPUT = {c: "block" for c in CATEGORIES} | {"harassment": "flag"}
DEFAULT_OUTPUT = {c: "block" for c in CATEGORIES}
DEFAULT_BLOCK_AT = 0.75


@dataclass
class Policy:
    enabled: bool = True
    input: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_INPUT))
    output: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_OUTPUT))
    thresholds: dict[str, float] = field(default_factory=dict)
    source: str = "default"
    block_at: float = DEFAULT_BLOCK_AT

    def action(self, direction: str, category: str) -> str:
        return (self.input if direction == "input" else self.output)[category]

    def _act(self, direction: str, category: str, scores: dict[str, float] | None) -> str:
        a = self.action(direction, category)
        return "flag" if a == "block" and scores is not None and scores.get(category, 1.0) < self.block_at else a

    def decide(self, direction: str, flagged: list[str], scores: dict[str, float] | None = None) -> str:
        """The strongest action among the flagged categories ('allow' when none is flagged); with `scores`,
        a block whose score is under `block_at` is a flag."""
        acts = {self._act(direction, c, scores) for c in flagged}
        return "block" if "block" in acts else "flag" if "flag" in acts else "allow"

    def blocking(self, direction: str, flagged: list[str], scores: dict[str, float] | None = None) -> list[str]:
        """The flagged categories that block on their own: the ones a refusal should speak of (a drug
        request that also scores as self-harm under `block_at` gets the plain refusal, not the help line)."""
        return [c for c in flagged if self._act(direction, c, scores) == "block"]

    def to_dict(self) -> dict:
        return {"enabled": self.enabled, "input": dict(self.input), "output": dict(self.output),
                "thresholds": dict(self.thresholds), "block_at": self.block_at, "source": self.source}


def _direction(name: str, raw, base: dict[str, str]) -> dict[str, str]:
    if raw is None:
        return dict(base)
    if not isinstance(raw, dict):
        raise UserError(f"moderation policy: [{name}] must be a table of category = action")
    for k, v in raw.items():
        if k != "default" and k not in CATEGORIES:
            raise UserError(f"moderation policy: [{name}] {k!r} is not a category; the categories are "
                            f"{', '.join(CATEGORIES)} (and 'default')")
        if v not in ACTIONS:
            raise UserError(f"moderation policy: [{name}] {k} = {v!r}: the action must be one of {', '.join(ACTIONS)}")
    out = {c: raw.get("default", base[c]) for c in CATEGORIES}
    for c in CATEGORIES:  # named parents first, then named sub-categories override them
        if PARENT[c] in raw and PARENT[c] != "default":
            out[c] = raw[PARENT[c]]
    for c in CATEGORIES:
        if c in raw:
            out[c] = raw[c]
    return out


def policy_from_dict(d: dict, source: str = "") -> Policy:
    unknown = set(d) - {"enabled", "input", "output", "thresholds", "block_at"}
    if unknown:
        raise UserError(f"moderation policy: unknown key(s) {', '.join(sorted(unknown))}; "
                        f"known: enabled, input, output, thresholds, block_at")
    block_at = d.get("block_at", DEFAULT_BLOCK_AT)
    if isinstance(block_at, bool) or not isinstance(block_at, (int, float)) or not 0 <= block_at <= 1:
        raise UserError(f"moderation policy: block_at = {block_at!r}: must be a number in [0, 1]")
    enabled = d.get("enabled", True)
    if not isinstance(enabled, bool):
        raise UserError("moderation policy: enabled must be true or false")
    th = d.get("thresholds") or {}
    if not isinstance(th, dict):
        raise UserError("moderation policy: [thresholds] must be a table of category = number")
    for k, v in th.items():
        if k not in CATEGORIES:
            raise UserError(f"moderation policy: [thresholds] {k!r} is not a category")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise UserError(f"moderation policy: [thresholds] {k} = {v!r}: must be a number in [0, 1]")
    return Policy(enabled, _direction("input", d.get("input"), DEFAULT_INPUT),
                  _direction("output", d.get("output"), DEFAULT_OUTPUT),
                  {k: float(v) for k, v in th.items()}, source or "dict", float(block_at))


def load_policy(path: str | Path | None) -> Policy:
    """The policy in `path` (TOML/YAML/JSON); the default policy when `path` is None."""
    if path is None:
        return Policy()
    from ..settings import load_config_file

    p = Path(path)
    if not p.is_file():
        raise UserError(f"moderation policy {p}: no such file")
    return policy_from_dict(load_config_file(p) or {}, str(p))
