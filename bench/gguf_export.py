"""GGUF export against llama.cpp: export a model with `alignchat export --format gguf`, load the file in
llama.cpp (through llama-cpp-python) and check that llama.cpp tokenizes our prompts as we do and decodes
the same greedy text as our engine; also the round trip through our own importer.

For each --type (default f32, f16, q8_0):
- round trip: the file read back by `alignchat.gguf_import`, max |logit difference| against the model that
  was exported, on a bilingual chat prompt (0 for f32);
- llama.cpp, when `llama_cpp` is importable (`pip install llama-cpp-python==0.3.36`, the bench extra):
  llama.cpp's logits at every position of the first prompt against our importer's and the exported
  model's (max |difference|, beside the logits' standard deviation); the token ids llama.cpp's tokenizer gives for each prompt's rendered chat text against ours; then from
  our prompt ids, llama.cpp's greedy tokens against our engine's greedy tokens (the engine decoding the
  same file's weights, read back by our importer), as the number of leading tokens that agree and whether
  the texts are equal; and llama.cpp's own chat (`create_chat_completion`, which renders the GGUF's
  `tokenizer.chat_template`) against our chat text. Without llama_cpp, those rows say it is missing.

    python bench/gguf_export.py [--model smollm2-135m-instruct] [--types f32,f16,q8_0] [--max-tokens 32]

Results: bench/results/gguf_export-MODEL.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignchat.engine import Engine, SamplingParams  # noqa: E402
from alignchat.export_gguf import export_gguf  # noqa: E402
from alignchat.gguf_import import load_gguf  # noqa: E402
from alignchat.hub import load_model  # noqa: E402

PROMPTS = ["What is the capital of France?", "用一句话介绍北京。", "Write a haiku about the sea.",
           "List three prime numbers."]


def ours_greedy(model, tok, ids: list[int], max_tokens: int) -> list[int]:
    eng = Engine(model, tok, max_batch=1, max_seq_len=min(model.cfg.max_seq_len, len(ids) + max_tokens + 1))
    return list(eng.generate([ids], SamplingParams(max_tokens=max_tokens, temperature=0.0))[0].token_ids)


def llama_greedy(llm, ids: list[int], max_tokens: int, stops: set[int]) -> list[int]:
    out = []
    llm.reset()
    for t in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if t in stops:
            out.append(t)
            break
        out.append(t)
        if len(out) >= max_tokens:
            break
    return out


def leading_agreement(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--types", default="f32,f16,q8_0")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None

    model, tok, meta = load_model(args.model)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    prompt_ids = [tok.render_chat(c, add_generation_prompt=True).ids for c in chats]
    result: dict = {"model": args.model, "max_tokens": args.max_tokens, "machine": platform.machine(),
                    "torch": torch.__version__,
                    "llama_cpp": getattr(llama_cpp, "__version__", None) if llama_cpp else "not installed",
                    "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for gtype in args.types.split(","):
            path = Path(tmp) / f"model-{gtype}.gguf"
            export_gguf(model, tok, path, gtype)
            back, back_tok, _ = load_gguf(path)
            back.eval()
            x = torch.tensor([prompt_ids[1]])
            with torch.no_grad():
                diff = float((model(x) - back(x)).abs().max())
            row: dict = {"file_mb": round(path.stat().st_size / 2**20, 1), "roundtrip_max_abs_logit_diff": diff,
                         "importer_token_ids_equal": all(back_tok.encode(p) == tok.encode(p) for p in PROMPTS)}
            ours = [ours_greedy(back, back_tok, ids, args.max_tokens) for ids in prompt_ids]
            row["ours_greedy"] = [tok.decode(o) for o in ours]
            if llama_cpp is not None:
                llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=args.threads, verbose=False,
                                      seed=0, logits_all=True)
                llm.reset()
                llm.eval(prompt_ids[0])  # llama.cpp's logits at every prompt position against our importer's
                cpp = torch.tensor(llm.scores[:len(prompt_ids[0])])
                with torch.no_grad():
                    mine = back(torch.tensor([prompt_ids[0]]))[0]
                    exported = model(torch.tensor([prompt_ids[0]]))[0]
                row["llama_cpp_vs_ours_max_abs_logit_diff"] = float((cpp - mine).abs().max())
                row["llama_cpp_vs_exported_model_max_abs_logit_diff"] = float((cpp - exported).abs().max())
                row["logit_std"] = float(exported.std())
                texts = [tok.render_text(c, add_generation_prompt=True) for c in chats]
                row["llama_cpp_token_ids_equal"] = [llm.tokenize(t.encode(), add_bos=False, special=True) == ids
                                                    for t, ids in zip(texts, prompt_ids)]
                stops = set(tok.stop_token_ids)
                theirs = [llama_greedy(llm, ids, args.max_tokens, stops) for ids in prompt_ids]
                row["llama_cpp_greedy"] = [tok.decode(t) for t in theirs]
                row["greedy_tokens_agreeing"] = [leading_agreement(a, b) for a, b in zip(ours, theirs)]
                row["greedy_lengths"] = [[len(a), len(b)] for a, b in zip(ours, theirs)]
                row["greedy_text_equal"] = [tok.decode(a) == tok.decode(b) for a, b in zip(ours, theirs)]
                chat_texts = []
                for c in chats:
                    r = llm.create_chat_completion(messages=c, max_tokens=args.max_tokens, temperature=0.0, top_k=1,
                                                   top_p=1.0, min_p=0.0, repeat_penalty=1.0)
                    chat_texts.append(r["choices"][0]["message"]["content"])
                row["llama_cpp_chat"] = chat_texts
                row["chat_text_equal"] = [a.strip() == tok.decode(o).strip() for a, o in zip(chat_texts, ours)]
                del llm
            result["types"][gtype] = row
            print(json.dumps({gtype: {k: v for k, v in row.items() if not k.endswith("greedy")
                                      and k != "llama_cpp_chat"}}, ensure_ascii=False), flush=True)
    out = Path(args.out or Path(__file__).parent / "results" / f"gguf_export-{Path(args.model).name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
