"""The tool loop (alignchat.tools.loop): a real fine-tuned tiny model calling the real calculator, the round
bound, calls to tools that are not enabled, and forced first calls."""
from __future__ import annotations

import json

import pytest

from alignchat.client import GREEDY, Completion, ModelClient
from alignchat.tools.loop import Reply, drive, run_tool_loop
from tools_support import ANSWER, EXPRESSION, QUESTION, tools_ckpt


@pytest.fixture(scope="module")
def calc_client():
    from alignchat.client.local import LocalClient
    return LocalClient(str(tools_ckpt()), device="cpu")


def test_the_model_calls_the_calculator_and_answers_from_its_result(calc_client):
    res = run_tool_loop(calc_client, [{"role": "user", "content": QUESTION}], ["calculator"],
                        sampling=GREEDY.but(max_tokens=64))
    assert [(c.name, json.loads(c.arguments), c.result, c.error) for c in res.calls] == [
        ("calculator", {"expression": EXPRESSION}, ANSWER, False)]
    assert res.final_text == ANSWER and res.rounds == 2
    roles = [m["role"] for m in res.messages]
    assert roles == ["user", "assistant", "tool", "assistant"]
    call = res.messages[1]["tool_calls"][0]
    assert res.messages[2] == {"role": "tool", "tool_call_id": call["id"], "content": ANSWER}
    assert res.new_messages == res.messages[1:]


def test_without_the_tool_enabled_nothing_is_offered_or_run(calc_client):
    res = run_tool_loop(calc_client, [{"role": "user", "content": QUESTION}], [],
                        sampling=GREEDY.but(max_tokens=64))
    assert res.calls == [] and res.rounds == 1
    assert [m["role"] for m in res.messages] == ["user", "assistant"]


class AlwaysCalls(ModelClient):
    """A model that calls the calculator whenever it is offered tools, and says "done" when it is not."""

    kind, name = "scripted", "always-calls"

    def __init__(self):
        super().__init__()
        self.prompts: list[list[dict]] = []

    def generate(self, prompts, sampling=None, truncate=False):
        self.prompts += prompts
        offered = "<tools>" in prompts[0][0]["content"]
        text = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'
        return [Completion(text if offered else "done")]

    def loglikelihood(self, pairs):
        raise NotImplementedError

    def count_tokens(self, prompt):
        return 0

    def describe(self):
        return {"backend": "scripted"}


@pytest.mark.parametrize("max_rounds", [0, 1, 3])
def test_a_model_that_always_calls_stops_after_max_rounds_with_text(max_rounds):
    client = AlwaysCalls()
    res = run_tool_loop(client, [{"role": "user", "content": "add"}], ["calculator"], max_rounds=max_rounds)
    assert len(res.calls) == max_rounds and all(c.result == "4" for c in res.calls)
    assert res.rounds == max_rounds + 1 and res.final_text == "done"
    assert res.messages[-1] == {"role": "assistant", "content": "done"}
    # the last generation was made with no tools offered
    assert "<tools>" not in json.dumps(client.prompts[-1])
    assert sum("<tools>" in p[0]["content"] for p in client.prompts) == max_rounds


def test_a_call_to_a_tool_that_is_not_enabled_gets_a_tool_error():
    def generate(messages, tools, choice):
        if tools is None:
            return Reply("ok")
        assert [t["function"]["name"] for t in tools] == ["calculator"]
        return Reply(None, [{"id": "c1", "type": "function",
                             "function": {"name": "python", "arguments": '{"code": "print(1)"}'}}])
    res = drive(generate, [{"role": "user", "content": "x"}], ["calculator"], max_rounds=1)
    assert len(res.calls) == 1 and res.calls[0].error
    assert "not available" in res.calls[0].result and "calculator" in res.calls[0].result
    assert res.messages[2]["role"] == "tool" and res.final_text == "ok"


def test_unknown_tool_names_are_refused_up_front():
    from alignchat.errors import UserError
    with pytest.raises(UserError, match="unknown tool 'shell'"):
        run_tool_loop(AlwaysCalls(), [{"role": "user", "content": "x"}], ["shell"])


def test_a_forced_call_cut_short_by_max_tokens_ends_the_loop_without_running_it(calc_client):
    # the grammar of a forced call alone is longer than 6 tokens, so the call cannot be complete
    res = run_tool_loop(calc_client, [{"role": "user", "content": "hi there"}], ["calculator"], max_rounds=2,
                        sampling=GREEDY.but(max_tokens=6), force_first=True)
    assert res.calls == [] and res.rounds == 1 and res.finish_reason == "length"
    assert [m["role"] for m in res.messages] == ["user", "assistant"] and "tool_calls" not in res.messages[-1]
