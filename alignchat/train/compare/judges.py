"""The judges of `compare judge`: rank each record's responses by a written rubric (RLAIF) or a checkable rule.

A judge has `name` (written into the labeller field as `ai:<name>`) and `rank(prompt, responses)`, the
response indices best first (None: no verdict; a judge may leave out tied responses). The judges:
- `ModelJudge`: one of our checkpoints, through `alignchat.client.LocalClient`, in one of two ways:
  * `contrast` (default): how much more likely the judge finds the reply when it is told to follow the
    rubric than when it is told to break it, per reply token:
    [log p(reply | rubric persona) − log p(reply | rubric-breaking persona)] / tokens. A small model
    cannot grade well but can tell which instructions a reply is consistent with;
  * `yesno`: the judge's log p("Yes") − log p("No") to "does this reply meet the rubric?";
  neither parses free text. It also has `scores_many`, which batches many records together.
- `EndpointJudge`: any OpenAI-compatible endpoint (`alignchat.client.EndpointClient`), asked for
  "RANKING: 2 > 1 > 3"; a reply that cannot be parsed is retried, then the record has no verdict.
- `RuleJudge`: a checkable property (a regular expression): more matches rank higher. This is how the
  documented end-to-end run builds a preference that can be measured.

Notable choices:
- One rubric (`RUBRIC`: helpful, honest, harmless, relevant, informative) for every AI judge; the
  contrast judge's two personas state it and break it on every point.
- Equal rule counts express no preference, so `RuleJudge` keeps one response per distinct count; every
  pair it yields is a true label.
"""
from __future__ import annotations

import re

from ...data import comparisons as C
from ...errors import UserError
from .prompts import with_system

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
        from ...client import ModelClient, make_client
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
            pairs = [(with_system(prompt, system), r or " ") for prompt, responses in records for r in responses
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
        from ...client import GREEDY
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


def make_judge(client=None, rule: str | None = None, method: str = "contrast"):
    """The judge for a rule, or for a model client: an endpoint ranks, a local model scores by `method`."""
    if rule:
        return RuleJudge(rule)
    if client is None:
        raise UserError("choose a judge: --judge-model CKPT, --judge-endpoint URL or --judge-rule REGEX")
    if client.kind == "endpoint":
        return EndpointJudge(client)
    return ModelJudge(client, method=method)
