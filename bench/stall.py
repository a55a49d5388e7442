"""Event-loop stall benchmark: the worst /health latency while the heaviest allowed request is in flight.

Starts the real server (`alignchat serve` in a subprocess on 127.0.0.1) and, for each heavy request the server
accepts, sends it while a second client polls /health as fast as it answers. The anchor is the same poll
against the idle server in the same run; the table gives the worst and median latency under load and the
worst-to-idle ratio. A server that does its CPU work on the event loop shows the heavy request's whole run as
one /health stall.

The heavy requests, each at the server's own limits (read from /health):
- `messages`: a chat of `max_messages` short turns (rendering and tokenising a long conversation);
- `body`: a chat whose one message fills the body cap (`max_body` bytes: JSON parsing, tokenising a long
  text, then refused as too long for the context);
- `upload`: a library upload of a text file at the library's ingest limit (parsing, chunking, embedding).

    python bench/stall.py                          # the default model (SmolLM2-135M-Instruct)
    python bench/stall.py --model runs/x/final --rounds 3
Results go to bench/results/stall-<model>.json and .md.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from serve_support import ServerProcess  # noqa: E402

WORDS = ("alignment reward policy 模型 训练 数据 evaluation 反馈 library citation 检索 answer ").split()


def heavy_requests(limits: dict, model: str, scale: float = 1.0) -> dict[str, tuple[str, dict]]:
    """name -> (method and path, request kwargs) for each heavy request, `scale` times the server's limits."""
    n = int(limits["max_messages"])
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i} {WORDS[i % len(WORDS)]}"}
             for i in range(n - 1)] + [{"role": "user", "content": "Summarise our conversation."}]
    chat = {"model": model, "messages": turns, "max_tokens": 1, "temperature": 0}
    # one message that fills the body cap (the JSON bytes themselves, as sent)
    line = " ".join(WORDS) + "\n"
    empty = json.dumps({"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 1},
                       ensure_ascii=False).encode()
    per_line = len(json.dumps(line, ensure_ascii=False).encode()) - 2
    lines = int((int(limits["max_body"]) * scale - len(empty)) // per_line)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": line * lines}], "max_tokens": 1},
                      ensure_ascii=False).encode()
    upload_chars = int(int(limits.get("library_upload_chars") or 200_000) * scale)
    para = " ".join(WORDS) * 8
    doc = "\n\n".join(f"Paragraph {i}. {para}" for i in range(upload_chars // len(para) + 1))[:upload_chars]
    return {
        "messages": ("POST /v1/chat/completions", {"json": chat}),
        "body": ("POST /v1/chat/completions", {"content": body, "headers": {"Content-Type": "application/json"}}),
        "upload": ("POST /v1/library/documents",
                   {"params": {"filename": "stall.txt"}, "content": doc.encode(),
                    "headers": {"Content-Type": "application/octet-stream"}}),
    }


def poll_health(url: str, stop: threading.Event, out: list[float], min_polls: int = 0) -> None:
    with httpx.Client(timeout=600) as c:
        while not stop.is_set() or len(out) < min_polls:
            t0 = time.perf_counter()
            c.get(url + "/health").raise_for_status()
            out.append(time.perf_counter() - t0)


def measure(url: str, method_path: str, kwargs: dict) -> dict:
    """Send one heavy request while polling /health; return its status and the latencies seen meanwhile."""
    method, path = method_path.split(" ", 1)
    lat: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=poll_health, args=(url, stop, lat), daemon=True)
    poller.start()
    time.sleep(0.2)  # the poller is running before the heavy request starts
    t0 = time.perf_counter()
    with httpx.Client(timeout=600) as c:
        r = c.request(method, url + path, **kwargs)
    took = time.perf_counter() - t0
    stop.set()
    poller.join()
    return {"status": r.status_code, "seconds": took, "polls": len(lat), "worst": max(lat),
            "median": statistics.median(lat)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="model to serve (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2, help="times each heavy request is sent (default: %(default)s)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="results folder (default: %(default)s)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        srv = ServerProcess(args.model, Path(tmp) / "stall.db").wait_ready(timeout=600)
        try:
            h = srv.health()
            limits, model = h["limits"], h["model"]
            idle: list[float] = []
            stop = threading.Event()
            stop.set()
            poll_health(srv.url, stop, idle, min_polls=200)
            rows = []
            for name in ("messages", "body", "upload"):
                # the heaviest the server accepts: the limits themselves, halved while a 413 says one is over
                # another limit (the library's passage count, say)
                scale = 1.0
                for _ in range(args.rounds):
                    while True:
                        method_path, kwargs = heavy_requests(limits, model, scale)[name]
                        res = measure(srv.url, method_path, kwargs)
                        if res["status"] != 413 or scale < 0.01:
                            break
                        scale /= 2
                    rows.append({"request": name, "scale": scale, **res})
                    print(f"{name:9s} x{scale:<6g} status {res['status']}  request {res['seconds']:.2f} s  /health worst "
                          f"{res['worst'] * 1000:.1f} ms, median {res['median'] * 1000:.1f} ms over {res['polls']} polls",
                          flush=True)
        finally:
            srv.stop()

    idle_worst, idle_median = max(idle), statistics.median(idle)
    result = {"model": args.model, "machine": platform.processor() or platform.machine(), "limits": limits,
              "idle": {"worst": idle_worst, "median": idle_median, "polls": len(idle)}, "rows": rows}
    print(f"\nidle /health: worst {idle_worst * 1000:.1f} ms, median {idle_median * 1000:.1f} ms ({len(idle)} polls)")
    lines = ["| request | of the limit | status | request s | /health worst ms | /health median ms | worst / idle worst |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['request']} | {r['scale']:g} | {r['status']} | {r['seconds']:.2f} | {r['worst'] * 1000:.1f} | "
                     f"{r['median'] * 1000:.1f} | {r['worst'] / idle_worst:.1f}x |")
    lines.append(f"| (idle) | | | | {idle_worst * 1000:.1f} | {idle_median * 1000:.1f} | 1.0x |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"stall-{Path(args.model).name}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(f"# /health latency under the heaviest allowed requests ({args.model})\n\n"
                                    f"Limits: {json.dumps(limits)}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
