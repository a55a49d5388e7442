"""@zh_fluency's echo rule: a reply that restates the prompt, whole or in part, is not a fluent answer,
while an answer that shares a few words with the question is."""
from __future__ import annotations

from alignchat.eval import chinese as C


def test_a_reply_that_restates_the_prompt_is_an_echo():
    prompt = "为什么天空是蓝色的？请简单解释。"
    assert C.fluency(prompt, prompt)["reason"] == "empty"  # the whole prompt: nothing is left after the echo
    for reply in ("为什么天空是蓝色的？", "天空为什么是蓝色的？请简单解释。"):
        got = C.fluency(reply, prompt)
        assert not got["fluent"] and got["reason"] == "echo", (reply, got)
    # a near-copy with a phrase left out (a real model's reply to the Linux question)
    got = C.fluency("如何杀死一个卡住的进程？", "如何在 Linux 上杀死一个卡住的进程？")
    assert got["reason"] == "echo" and got["echo_share"] >= C.MAX_ECHO_SHARE


def test_an_answer_that_reuses_the_questions_words_is_still_fluent():
    prompt = "为什么天空是蓝色的？请简单解释。"
    answer = "因为阳光穿过大气层时，蓝色光的波长较短，被空气分子散射得更多，所以我们看到的天空是蓝色的。"
    got = C.fluency(answer, prompt)
    assert got["fluent"] and 0 < got["echo_share"] < C.MAX_ECHO_SHARE
    assert C.fluency(answer)["echo_share"] == 0.0  # no prompt given: nothing to echo
