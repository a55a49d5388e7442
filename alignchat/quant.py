"""Weight-only quantisation: int8 (per output channel) and int4 (group-wise) `QuantLinear` layers that replace
a loaded model's `nn.Linear` layers, kernels chosen by measuring them on this machine, and the CPU precision
default (`auto_precision`).

    model = quantize_model(model, "int8")        # or "int4"; in place, returns the model
    choose_kernels(model)                         # time each candidate kernel at the model's real shapes
    auto_precision("cpu")                         # (dtype, reason): what the server and chat use by default

Notable choices:
- Schemes. int8: symmetric, one float scale per output row (w = q * scale, q in [-127, 127]), as llama.cpp's
  Q8_0 but per row. int4: asymmetric groups of `group_size` (default 32) input columns, w = q * scale + min
  with q in [0, 15], as llama.cpp's Q4_1. Activations stay in the model's dtype; only the weights are
  quantised.
- The stored form (`qweight`, `scales`, `mins` buffers; int4 packs two values per byte, the even column in
  the high nibble) is independent of the kernel and the device, so a quantised checkpoint loads anywhere; the
  kernels' own packed layouts are built at load and never saved.
- Kernels come from PyTorch and are picked by measurement, never assumed: on one machine the int8 kernel is
  4x faster than a float32 matrix-vector product, on another it was slower. Candidates per scheme:
  "int8pack" (`torch._weight_int8pack_mm`) / "int4pack" (`torch._weight_int4pack_mm_for_cpu`, or
  `torch._weight_int4pack_mm` on CUDA), "dequant" (dequantise to the activation dtype at each call, then
  `F.linear`: no extra memory) and "dense" (a dequantised copy kept in the activation dtype: the model's
  float memory back, the quantised numerics kept). All compute the same quantised weights, so the choice
  changes speed, never the model. `choose_kernels` runs a few matmuls per candidate at every distinct
  layer shape, at M=1 (one decoding row) and M=8 (a batch), and picks the fastest for rows <= 4 and for
  more rows separately; a candidate that raises (a kernel this build or device lacks, an unsupported
  shape or dtype) is dropped, and "dequant" always works. The choice is recorded in
  `model.quantization["kernels"]`. `ALIGNCHAT_QUANT_KERNELS=int8pack,dense` (a comma list) limits the
  candidates, e.g. to compare two runs computing alike.
- Every Linear of the blocks and the LM head is quantised. With tied embeddings the LM head becomes its own
  `QuantLinear` built from the embedding matrix, and the embedding lookup keeps the float table (a lookup
  reads one row per token; its size is the price of exact inputs).
- `auto_precision`: bfloat16 on a CPU with native bf16 arithmetic (AVX512_BF16 or AMX in /proc/cpuinfo)
  and on CUDA, float32 elsewhere. int8 is never a silent default: whether its text matches bfloat16 is
  measured per model by `bench/quant_quality.py`, and a user asks for it with `--quantize int8`.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEMES = ("int8", "int4")
INT4_GROUP_SIZE = 32
SMALL_M = 4  # rows up to this use the kernel measured at M=1; more rows the one measured at M=8
KERNELS = {"int8": ("int8pack", "dequant", "dense"), "int4": ("int4pack", "dequant", "dense")}


class QuantError(ValueError):
    """A scheme, group size or layer shape that cannot be quantised."""


# --- quantise / dequantise (the stored form) -------------------------------------------------------
def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(qweight int8 (N, K), scales float32 (N,)) with w ~= qweight * scales[:, None]."""
    w = w.detach().float()
    scales = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(w: torch.Tensor, group_size: int = INT4_GROUP_SIZE):
    """(qweight uint8 (N, K/2), scales float32 (N, K/g), mins float32 (N, K/g)), w ~= q * scale + min."""
    N, K = w.shape
    if group_size <= 0 or K % group_size or group_size % 2:
        raise QuantError(f"int4 needs the input width ({K}) to be a multiple of the group size ({group_size})")
    g = w.detach().float().view(N, K // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8).view(N, K)
    return (q[:, 0::2] << 4) | q[:, 1::2], scales, lo


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) values 0..15 (uint8)."""
    N = packed.shape[0]
    return torch.stack([packed >> 4, packed & 15], dim=-1).view(N, -1)


def dequantize(scheme: str, qweight, scales, mins=None, dtype=torch.float32) -> torch.Tensor:
    if scheme == "int8":
        return (qweight.to(dtype) * scales.to(dtype)[:, None])
    q = unpack_int4(qweight)
    N, K = q.shape
    groups = scales.shape[1]
    w = q.view(N, groups, K // groups).to(dtype) * scales.to(dtype)[..., None] + mins.to(dtype)[..., None]
    return w.view(N, K)


# --- the layer -------------------------------------------------------------------------------------
class QuantLinear(nn.Module):
    """A weight-only quantised `nn.Linear` (no bias or a float bias). Buffers `qweight`, `scales` (and `mins`
    for int4) are the saved form; the kernel's packed layout is built by `prepare` and never saved."""

    def __init__(self, in_features: int, out_features: int, scheme: str, bias: bool = False,
                 group_size: int = INT4_GROUP_SIZE, device=None):
        super().__init__()
        if scheme not in SCHEMES:
            raise QuantError(f"unknown quantisation scheme {scheme!r} (expected one of {', '.join(SCHEMES)})")
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.group_size = group_size if scheme == "int4" else 0
        if scheme == "int8":
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.ones(out_features, device=device))
            self.mins = None
        else:
            if in_features % group_size:
                raise QuantError(f"int4 needs the input width ({in_features}) to be a multiple of the group "
                                 f"size ({group_size})")
            groups = in_features // group_size
            self.register_buffer("qweight", torch.zeros(out_features, in_features // 2, dtype=torch.uint8,
                                                        device=device))
            self.register_buffer("scales", torch.ones(out_features, groups, device=device))
            self.register_buffer("mins", torch.zeros(out_features, groups, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device)) if bias else None
        self.kernels: tuple[str, str] = ("dequant", "dequant")  # (rows <= SMALL_M, more rows)
        self._rt: dict | None = None  # the kernels' packed forms, for one (device, dtype)

    @classmethod
    def from_linear(cls, weight: torch.Tensor, bias: torch.Tensor | None, scheme: str,
                    group_size: int = INT4_GROUP_SIZE) -> "QuantLinear":
        N, K = weight.shape
        m = cls(K, N, scheme, bias=bias is not None, group_size=group_size, device=weight.device)
        with torch.no_grad():
            if scheme == "int8":
                q, s = quantize_int8(weight)
                m.qweight.copy_(q)
                m.scales.copy_(s)
            else:
                q, s, lo = quantize_int4(weight, group_size)
                m.qweight.copy_(q)
                m.scales.copy_(s)
                m.mins.copy_(lo)
            if bias is not None:
                m.bias.copy_(bias.detach())
        return m

    def _apply(self, fn, recurse=True):
        # `.to(dtype)` moves the scales but keeps them float32: they are the quantised weights' precision
        keep = {n: self._buffers[n] for n in ("scales", "mins") if self._buffers.get(n) is not None}
        super()._apply(fn, recurse)
        for n, t in keep.items():
            moved = self._buffers[n]
            if moved.dtype != t.dtype:
                self._buffers[n] = t.to(moved.device)
        self._rt = None
        return self

    def extra_repr(self) -> str:
        g = f", group_size={self.group_size}" if self.group_size else ""
        return f"in={self.in_features}, out={self.out_features}, {self.scheme}{g}, kernels={self.kernels}"

    def dequantized(self, dtype=torch.float32) -> torch.Tensor:
        """The float weight this layer computes with: (out, in)."""
        return dequantize(self.scheme, self.qweight, self.scales, self.mins, dtype)

    # --- kernels ----------------------------------------------------------------------------------
    def prepare(self, dtype: torch.dtype, kernels: tuple[str, str] | None = None) -> None:
        """Build the packed forms `kernels` need for activations of `dtype` on this layer's device."""
        if kernels is not None:
            self.kernels = kernels
        dev = self.qweight.device
        rt: dict = {"device": dev, "dtype": dtype}
        for k in set(self.kernels):
            rt[k] = build_kernel_state(self, k, dtype)
        self._rt = rt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rt = self._rt
        if rt is None or rt["device"] != x.device or rt["dtype"] != x.dtype:
            self.prepare(x.dtype)  # moved or cast since the kernels were chosen: keep the choice, repack
            rt = self._rt
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        kernel = self.kernels[0] if x2.shape[0] <= SMALL_M else self.kernels[1]
        out = run_kernel(self, kernel, rt[kernel], x2)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.view(*shape[:-1], self.out_features)


def build_kernel_state(layer: QuantLinear, kernel: str, dtype: torch.dtype):
    """What `kernel` reads for `layer` (packed weights, scales in `dtype`); raises if it is unavailable."""
    dev = layer.qweight.device
    if kernel == "dequant":
        return None
    if kernel == "dense":
        return layer.dequantized(dtype)
    if kernel == "int8pack" and layer.scheme == "int8":
        if not hasattr(torch, "_weight_int8pack_mm"):
            raise RuntimeError("torch._weight_int8pack_mm is not in this PyTorch build")
        return (layer.qweight.contiguous(), layer.scales.to(dtype).contiguous())
    if kernel == "int4pack" and layer.scheme == "int4":
        q = unpack_int4(layer.qweight).to(torch.int32)
        N, K = q.shape
        # the kernels' convention: w = (q - 8) * scale + zero, scales_and_zeros (K/g, N, 2)
        zeros = layer.mins + 8 * layer.scales
        sz = torch.stack([layer.scales.t(), zeros.t()], dim=-1).to(dtype).contiguous()
        if dev.type == "cpu":
            packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
        else:
            packed = torch._convert_weight_to_int4pack(layer.qweight.contiguous(), 8)
        return (packed, sz)
    raise RuntimeError(f"kernel {kernel!r} does not apply to {layer.scheme}")


def run_kernel(layer: QuantLinear, kernel: str, state, x: torch.Tensor) -> torch.Tensor:
    if kernel == "dequant":
        return F.linear(x, layer.dequantized(x.dtype))
    if kernel == "dense":
        return F.linear(x, state)
    if kernel == "int8pack":
        q, s = state
        return torch._weight_int8pack_mm(x.contiguous(), q, s)
    if kernel == "int4pack":
        packed, sz = state
        if x.device.type == "cpu":
            return torch._weight_int4pack_mm_for_cpu(x.contiguous(), packed, layer.group_size, sz)
        return torch._weight_int4pack_mm(x.contiguous(), packed, layer.group_size, sz)
    raise RuntimeError(f"unknown kernel {kernel!r}")


# --- whole models ----------------------------------------------------------------------------------
def _targets(model) -> list[tuple[nn.Module, str, nn.Linear]]:
    out = []
    for name, mod in model.named_modules():
        for child_name, child in mod.named_children():
            if isinstance(child, nn.Linear) and not (name.endswith("score_head") or child_name == "score_head"):
                out.append((mod, child_name, child))
    return out


def quantize_model(model, scheme: str, group_size: int = INT4_GROUP_SIZE):
    """Replace every `nn.Linear` of a `model.Transformer` (blocks and LM head) by a `QuantLinear`, in place.
    With tied embeddings the LM head is built from the embedding matrix; the lookup keeps the float table."""
    if scheme not in SCHEMES:
        raise QuantError(f"unknown quantisation scheme {scheme!r} (expected one of {', '.join(SCHEMES)})")
    if getattr(model, "quantization", None):
        raise QuantError(f"the model is already quantised ({model.quantization['scheme']})")
    if scheme == "int4":
        for _, _, lin in _targets(model):
            if lin.in_features % group_size:
                raise QuantError(f"int4 with group size {group_size} needs every layer's input width to be a "
                                 f"multiple of it; one has {lin.in_features}")
    for parent, name, lin in _targets(model):
        setattr(parent, name, QuantLinear.from_linear(lin.weight, lin.bias, scheme, group_size))
    if model.lm_head is None:  # tied: the head gets its own quantised copy of the embedding matrix
        model.lm_head = QuantLinear.from_linear(model.model.embed_tokens.weight, None, scheme, group_size)
    model.quantization = {"scheme": scheme, "group_size": group_size if scheme == "int4" else None,
                          "granularity": "per-channel" if scheme == "int8" else f"groups of {group_size}",
                          "lm_head": True, "tied_embeddings": bool(model.cfg.tie_embeddings)}
    return model


def quant_layers(model) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]


def skeleton(model, quantization: dict):
    """Swap a freshly built (e.g. meta-device) model's Linear layers for empty `QuantLinear`s of the saved
    scheme, so a quantised state dict loads into it (`load_state_dict(..., assign=True)`)."""
    scheme = quantization.get("scheme")
    if scheme not in SCHEMES:
        raise QuantError(f"unknown quantisation scheme {scheme!r} in the checkpoint")
    gs = int(quantization.get("group_size") or INT4_GROUP_SIZE)
    dev = next(model.parameters()).device
    for parent, name, lin in _targets(model):
        setattr(parent, name, QuantLinear(lin.in_features, lin.out_features, scheme, lin.bias is not None, gs,
                                          device=dev))
    if model.lm_head is None:
        model.lm_head = QuantLinear(model.cfg.dim, model.cfg.vocab_size, scheme, False, gs, device=dev)
    model.quantization = {k: v for k, v in quantization.items() if k != "kernels"}
    return model


def choose_kernels(model, dtype: torch.dtype | None = None, candidates: tuple[str, ...] | None = None,
                   repeats: int = 5) -> dict:
    """Measure each candidate kernel at each distinct layer shape (M=1 and M=8 rows) and give every layer the
    fastest for few and for many rows. Returns (and stores in `model.quantization["kernels"]`) the choice
    and the timings in microseconds per shape."""
    layers = quant_layers(model)
    if not layers:
        return {}
    dtype = dtype or model.model.embed_tokens.weight.dtype
    scheme = layers[0].scheme
    if candidates is None:
        allowed = [k.strip() for k in os.environ.get("ALIGNCHAT_QUANT_KERNELS", "").split(",") if k.strip()]
        candidates = tuple(k for k in KERNELS[scheme] if not allowed or k in allowed) or ("dequant",)
    by_shape: dict[tuple, list[QuantLinear]] = {}
    for m in layers:
        by_shape.setdefault((m.out_features, m.in_features), []).append(m)
    report = {}
    sync = torch.cuda.synchronize if layers[0].qweight.device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for (N, K), group in by_shape.items():
            layer = group[0]
            runs, errors = {}, {}
            for kernel in candidates:
                try:
                    state = build_kernel_state(layer, kernel, dtype)
                    for M in (1, 8):  # a first call each: allocation and kernel setup stay out of the timing
                        x = torch.randn(M, K, device=layer.qweight.device, dtype=dtype)
                        run_kernel(layer, kernel, state, x)
                        runs[(kernel, M)] = (state, x)
                except Exception as e:  # noqa: BLE001 - a kernel this build, device, shape or dtype lacks
                    errors[kernel] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    runs = {k: v for k, v in runs.items() if k[0] != kernel}
            best = {key: float("inf") for key in runs}
            for _ in range(repeats):  # round robin: a burst of load from elsewhere hits every candidate alike
                for (kernel, M), (state, x) in runs.items():
                    sync()
                    t0 = time.perf_counter()
                    run_kernel(layer, kernel, state, x)
                    sync()
                    best[(kernel, M)] = min(best[(kernel, M)], time.perf_counter() - t0)
            times: dict[str, dict[int, float]] = {}
            for (kernel, M), t in best.items():
                times.setdefault(kernel, {})[M] = t * 1e6
            if times:
                small = min(times, key=lambda k: times[k][1])
                large = min(times, key=lambda k: times[k][8])
            else:  # nothing ran: dequantising at each call always works
                small = large = "dequant"
            for m in group:
                m.prepare(dtype, (small, large))
            report[f"{N}x{K}"] = {"layers": len(group), "small_rows": small, "many_rows": large,
                                  "us": {k: {f"M={M}": round(t, 1) for M, t in v.items()} for k, v in times.items()},
                                  **({"unavailable": errors} if errors else {})}
    summary = {"dtype": str(dtype).removeprefix("torch."), "small_rows_max": SMALL_M, "shapes": report}
    if getattr(model, "quantization", None) is not None:
        model.quantization["kernels"] = summary
    return summary


def apply_kernels(model, summary: dict) -> None:
    """Give every layer the kernels a `choose_kernels` summary recorded for its shape (e.g. another model's,
    to compare two models computing alike)."""
    dtype = getattr(torch, summary["dtype"])
    for m in quant_layers(model):
        shape = summary["shapes"][f"{m.out_features}x{m.in_features}"]
        m.prepare(dtype, (shape["small_rows"], shape["many_rows"]))
    if getattr(model, "quantization", None) is not None:
        model.quantization["kernels"] = summary


# --- precision defaults ------------------------------------------------------------------------------
def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def native_bf16(flags: set[str] | None = None) -> str | None:
    """The CPU feature that makes bfloat16 arithmetic native here (e.g. "avx512_bf16"), or None."""
    flags = cpu_flags() if flags is None else flags
    for f in ("amx_bf16", "avx512_bf16", "avx_ne_convert"):
        if f in flags:
            return f
    return None


def time_decode_step(model, dtype: torch.dtype, reps: int = 5) -> float:
    """Median seconds of one single-token forward of `model` in `dtype` (a copy when it is not the
    model's own dtype): the matrix-vector products that decode is made of, at their real shapes."""
    import copy
    import statistics
    import time as _time
    trial = model if next(model.parameters()).dtype == dtype else copy.deepcopy(model).to(dtype)
    ids = torch.zeros((1, 1), dtype=torch.long, device=next(model.parameters()).device)
    times = []
    with torch.no_grad():
        for i in range(reps + 2):  # two warm-ups
            t0 = _time.perf_counter()
            trial(ids)
            if i >= 2:
                times.append(_time.perf_counter() - t0)
    del trial
    return statistics.median(times)


def measured_cpu_precision(model, margin: float = 0.9) -> tuple[torch.dtype, str]:
    """bfloat16 or float32 for a float32 `model` on a CPU with native bf16, chosen by timing a decode step
    in each (bfloat16 only when it takes at most `margin` of float32's time): the flag alone does not say
    which is faster, since PyTorch's kernels for each differ from CPU to CPU."""
    t32, t16 = time_decode_step(model, torch.float32), time_decode_step(model, torch.bfloat16)
    timed = f"a decode step timed here: float32 {t32 * 1e3:.1f} ms, bfloat16 {t16 * 1e3:.1f} ms"
    if t16 <= margin * t32:
        return torch.bfloat16, f"bfloat16: faster on this CPU ({native_bf16()}; {timed})"
    return torch.float32, f"float32: faster on this CPU although it has native bf16 ({timed})"


def auto_precision(device: str) -> tuple[torch.dtype, str]:
    """(dtype, why) for a model that the user gave no --dtype for."""
    if str(device).startswith("cuda"):
        return torch.bfloat16, "bfloat16: the default on CUDA"
    if str(device).startswith("cpu"):
        feature = native_bf16()
        if feature:
            return torch.bfloat16, f"bfloat16: this CPU has native bf16 arithmetic ({feature})"
        return torch.float32, "float32: this CPU has no native bf16 arithmetic, where bfloat16 is emulated and slower"
    return torch.float32, f"float32: the default on {device}"
