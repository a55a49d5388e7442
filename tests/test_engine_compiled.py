"""Compiled CPU decode steps (engine/compiled.py): the same greedy tokens as eager decoding while requests
join and leave, across batch and cache-length buckets; the compiled code reused from disk by a new process;
a failed compile decoding eagerly.

Each engine run happens in a fresh Python process (this file run as a script), so a run's Inductor counters
are its own and a second process shows what the disk cache gives a restarted server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
KV_BLOCK = 32  # small cache-length buckets, so a short generation crosses one


SCHEDULES = {
    # five prompts on four slots: the second leaves after 3 tokens (3 rows, padded to 4), the fifth joins in
    # its slot, and the rest finish together: two graphs, as the long prompt's positions cross a length bucket
    "small": ([list(range(3, 3 + 28)), [100, 4, 5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7, 7], [250, 1, 2]],
              [12, 3, 12, 12, 9]),
    # seven prompts on four slots, ending at different steps: batches of 1 to 4 and both length buckets
    "full": ([list(range(3, 3 + 28)), [100, 4, 5, 6, 7, 8, 9, 10, 11], [42], [7, 7, 7, 7, 7], [250, 1, 2],
              [5, 6], [8]], [12, 3, 9, 6, 10, 4, 7]),
}


def worker(ckpt: str, variant: str, schedule: str, modes: list[str]) -> dict:
    """Generate a schedule greedily in each of `modes`; the tokens, the buckets compiled and the counters."""
    import dataclasses
    import warnings

    import torch

    from alignchat.engine import Engine, SamplingParams, decode
    from alignchat.hub import load_model
    from alignchat.model import Transformer

    torch.set_num_threads(1)
    decode.COMPILE_KV_BLOCK = KV_BLOCK
    model, tok, _ = load_model(ckpt)
    if variant == "sliding":  # Gemma 3 style: local layers with a window shorter than the prompts
        cfg = dataclasses.replace(model.cfg, sliding_window=8, sliding_window_pattern=2, qk_norm=True,
                                  sandwich_norms=True, norm_plus_one=True, mlp_act="gelu_tanh", embed_scale=True,
                                  rope_local_theta=5000.0, query_pre_attn_scalar=16.0, family="gemma3")
        torch.manual_seed(0)
        model = Transformer(cfg).init_weights(seed=1, std=0.05).eval()
    elif variant == "int8":
        from alignchat.quant import choose_kernels, quantize_model
        quantize_model(model, "int8")
        choose_kernels(model, candidates=("int8pack", "dequant"))
    prompts, lengths = SCHEDULES[schedule]
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    out: dict = {}
    for mode in modes:
        engine = Engine(model, tok, max_batch=4, max_seq_len=64)
        engine.decode_mode = mode
        sizes = []
        decode_step = engine._decode
        engine._decode = lambda tokens, *a: sizes.append(len(tokens)) or decode_step(tokens, *a)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            tokens = [g.token_ids for g in engine.generate(prompts, params)]
        step = engine.decoder.compiled
        out[mode] = {"tokens": tokens, "final_mode": engine.decode_mode, "sizes": sorted(set(sizes)),
                     "buckets": sorted(step.timings) if step else [],
                     "fallback_warnings": [str(w.message) for w in caught if "decoding eagerly" in str(w.message)]}
    from torch._dynamo.utils import counters
    out["counters"] = {k: dict(counters[k]) for k in ("inductor", "aot_autograd")}
    out["cache_files"] = sum(len(files) for _, _, files in os.walk(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
    return out


def run_worker(ckpt, cache_dir, variant="float32", schedule="small", modes=("eager", "compiled"), env=None) -> dict:
    e = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache_dir), OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.run([sys.executable, str(HERE), str(ckpt), variant, schedule, *modes], capture_output=True,
                          text=True,
                          env=e, cwd=HERE.parents[1], timeout=1800)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compiled_decode_matches_eager_and_a_new_process_loads_it_from_disk(tiny_ckpt, tmp_path):
    cold = run_worker(tiny_ckpt, tmp_path / "inductor")
    eager, comp = cold["eager"], cold["compiled"]
    assert comp["final_mode"] == "compiled" and not comp["fallback_warnings"]
    assert comp["tokens"] == eager["tokens"]
    assert [len(t) for t in comp["tokens"]] == SCHEDULES["small"][1]
    assert comp["sizes"] == [3, 4]  # a request left (3 rows padded to 4) and another joined
    assert comp["buckets"] == [[4, KV_BLOCK], [4, 2 * KV_BLOCK]]
    assert cold["counters"]["inductor"].get("fxgraph_cache_miss", 0) == len(comp["buckets"])
    assert cold["cache_files"] > 0
    # a restarted process: every bucket's graph comes from the disk cache, and decodes the same tokens
    warm = run_worker(tiny_ckpt, tmp_path / "inductor", modes=("compiled",))
    assert warm["compiled"]["tokens"] == eager["tokens"]
    assert sorted(map(tuple, warm["compiled"]["buckets"])) == sorted(map(tuple, comp["buckets"]))
    assert warm["counters"]["inductor"].get("fxgraph_cache_hit", 0) == len(comp["buckets"])
    assert warm["counters"]["inductor"].get("fxgraph_cache_miss", 0) == 0
    assert warm["counters"]["aot_autograd"].get("autograd_cache_hit", 0) == len(comp["buckets"])


def test_a_failed_compile_warns_and_decodes_eagerly(tiny_ckpt, tmp_path):
    """No C++ compiler (a bad $CXX, a fresh cache): the first step's compile fails, the engine warns, decodes
    that step and every later one eagerly, and every request gets its tokens."""
    out = run_worker(tiny_ckpt, tmp_path / "inductor", env={"CXX": str(tmp_path / "no-such-c++")})
    comp = out["compiled"]
    assert comp["final_mode"] == "eager" and len(comp["fallback_warnings"]) == 1
    assert comp["tokens"] == out["eager"]["tokens"]


def test_compile_flag_reports_what_it_did(tiny_ckpt, tmp_path, monkeypatch):
    """`--compile on` switches a CPU engine to compiled steps and says where the cache is; without a C++
    compiler it stays eager and says why; off says how to turn it on."""
    import argparse

    import torch._inductor.config as inductor_config

    from alignchat.commands.common import add_model_args, apply_compile
    from alignchat.engine import Engine
    from alignchat.hub import load_model
    p = argparse.ArgumentParser()
    add_model_args(p)
    assert p.parse_args([]).compile is None and p.parse_args(["--compile", "on"]).compile == "on"
    with pytest.raises(SystemExit):
        p.parse_args(["--compile", "maybe"])
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    model, tok, _ = load_model(tiny_ckpt)
    engine = Engine(model, tok, max_batch=2, max_seq_len=64)
    assert apply_compile(engine, None).startswith("off") and engine.decode_mode == "eager"
    with inductor_config.patch({"cpp.cxx": (None, str(tmp_path / "no-such-c++"))}):
        assert "no C++ compiler" in apply_compile(engine, "on") and engine.decode_mode == "eager"
    assert str(tmp_path / "inductor") in apply_compile(engine, "on") and engine.decode_mode == "compiled"


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float32", "int8", "sliding"])
def test_compiled_decode_matches_eager_across_batch_buckets(tiny_ckpt, tmp_path, variant):
    """Batches of 1 to 4 as requests join and leave, both length buckets; float32, an int8 model
    (`QuantLinear`) and a Gemma 3 style model with sliding-window layers."""
    out = run_worker(tiny_ckpt, tmp_path / "inductor", variant=variant, schedule="full")
    comp = out["compiled"]
    assert comp["final_mode"] == "compiled" and not comp["fallback_warnings"]
    assert comp["tokens"] == out["eager"]["tokens"]
    assert {1, 2, 3, 4} <= set(comp["sizes"])
    assert {b for b, _ in comp["buckets"]} == {1, 2, 4} and {L for _, L in comp["buckets"]} == {KV_BLOCK, 2 * KV_BLOCK}


@pytest.mark.slow
def test_serve_compile_on_answers_as_the_eager_server_does(tiny_ckpt, tmp_path):
    """`alignchat serve --compile on`: /health says the steps are compiled and where the cache is, and a
    greedy chat completion gives the eager server's text."""
    import httpx
    sys.path.insert(0, str(HERE.parent))
    from serve_support import ServerProcess
    body = {"model": "tiny", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    answers, healths = [], []
    for flags in ((), ("--compile", "on")):
        srv = ServerProcess(tiny_ckpt, tmp_path / f"serve{len(flags)}.db", "--max-batch", "2", "--context", "64",
                            *flags, env=env).wait_ready()
        try:
            r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=900)
            assert r.status_code == 200, r.text
            answers.append(r.json()["choices"][0]["message"]["content"])
            healths.append(srv.health()["engine"])
        finally:
            srv.stop()
    assert healths[0]["decode"] == "eager" and healths[0]["compile"].startswith("off")
    assert healths[1]["decode"] == "compiled" and str(tmp_path / "inductor") in healths[1]["compile"]
    assert answers[1] == answers[0]


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    print(json.dumps(worker(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])))
