"""Grammar-constrained decoding: a JSON Schema (or a Lark grammar) as a per-request token mask, by llguidance.

`json_constraint(tokenizer, schema)` returns a logits processor for `SamplingParams.logits_processors`
(sampling.py) that keeps one request's output inside the schema (`None`: any JSON object);
`lark_constraint(tokenizer, grammar)` does the same for a Lark grammar, which may embed a JSON Schema
(`%json {...}`), e.g. a tool call's arguments inside the model's own call syntax. Both raise `UserError`,
naming the problem, when the library cannot compile what they are given.

Notable choices:
- llguidance (Rust, CPU, no dependencies) computes the masks; xgrammar would bring transformers and triton
  into the runtime. Its tokenizer is built from our tokenizer's own `tokenizers` JSON (`hf.to_str()`), no
  transformers, with the tokenizer's end-of-turn tokens (`Tokenizer.stop_token_ids`) as its end tokens.
  It is built once per `Tokenizer` object (about 0.3 s for a 49k vocabulary).
- Compiled grammars are cached (LRU, `CACHE_SIZE`) by tokenizer and schema text, as a matcher in its start
  state; each request gets its own copy of it (`deep_copy`, microseconds), so a request never sees another's
  parser state. Schemas are keyed by their JSON text as given, not sorted: property order is part of the
  grammar (objects are generated in the schema's property order).
- Compiling checks the grammar and computes its first mask, so a schema that cannot be used fails there, as
  a `UserError` with the library's message, not mid-generation. Parser limits are llguidance's defaults
  (they bound a hostile schema's compile and per-token cost); its errors are not verbose, so they never
  echo internal parser state.
- JSON is laid out as `json.dumps` does: `", "` and `": "` and no other whitespace. A model cannot spend its
  token budget on whitespace, and the text is what models see most. A schema's own `x-guidance` options
  override this.
- The processor follows the engine's hook, `(output_ids, logits) -> logits`: at each call it first advances
  its matcher by the tokens appended to `output_ids` since its previous call (the engine appends the token
  it chose), so it needs to be told nothing else. It has `for_request()`, which the engine calls as it
  admits each request (slots.py), so one `SamplingParams` shared by a batch still gives every request its
  own parser.
- The mask is computed into a CPU bit buffer (one bit per token), unpacked by numpy into one bool per token
  and, for CUDA logits, copied to their device and applied by one `torch.where`, out of place (the
  engine's logits may be a CUDA graph's output buffer). On the CPU numpy applies it: a vocabulary-sized
  torch operation wakes torch's thread pool, which costs milliseconds per row when the cores are busy,
  while the mask itself takes about 0.1 ms. Tokens the model has beyond the tokenizer's vocabulary are
  never allowed.
- When the JSON is complete, only end-of-turn tokens are allowed, so the request ends with
  `finish_reason: "stop"`; stop strings and `max_tokens` still apply (they may cut the JSON short). Should
  the matcher ever refuse a token (a later processor changed the row) or fail, it logs once (no content)
  and allows only end-of-turn tokens: the request ends, the batch goes on. Nothing here runs for requests
  without a constraint.
"""
from __future__ import annotations

import json
import logging
import threading
import weakref
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

from ..errors import UserError
from ..tokenizer import Tokenizer

log = logging.getLogger("alignchat.engine")

CACHE_SIZE = 128  # compiled grammars kept (per process, all tokenizers together)
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
ANY_OBJECT: dict = {"type": "object"}

_lock = threading.Lock()  # the grammar cache and the start states copied from it
_tok_lock = threading.Lock()  # building a tokenizer's llguidance view (slow, once)
_tokenizers: "weakref.WeakKeyDictionary[Tokenizer, _TokenizerInfo]" = weakref.WeakKeyDictionary()
_grammars: "OrderedDict[tuple, _Compiled]" = OrderedDict()


def _llg():
    import llguidance
    return llguidance


def _library_failure(e: BaseException) -> bool:
    """Whether `e` is a failure inside the library rather than an interrupt: a Rust panic reaches Python as
    pyo3's PanicException, a BaseException, which must not end the engine's thread."""
    return not isinstance(e, (KeyboardInterrupt, SystemExit, GeneratorExit))


class _TokenizerInfo:
    """llguidance's view of one of our tokenizers, and its end-of-turn tokens."""

    def __init__(self, tokenizer: Tokenizer):
        llg = _llg()
        self.stop_ids = list(tokenizer.stop_token_ids)
        if not self.stop_ids:
            raise UserError("constrained decoding needs an end-of-turn token, and this model's tokenizer has none")
        try:
            self.lltok = llg.LLTokenizer(tokenizer.hf.to_str(), eos_token=self.stop_ids)
        except BaseException as e:  # a tokenizer llguidance cannot read
            if not _library_failure(e):
                raise
            raise UserError(f"constrained decoding is not available for this model's tokenizer: {e}") from None
        self.vocab_size = self.lltok.vocab_size
        self.limits = llg.LLParserLimits(verbose_errors=False)


def tokenizer_info(tokenizer: Tokenizer) -> _TokenizerInfo:
    """The llguidance tokenizer of `tokenizer`, built on first use (about 0.3 s for a 49k vocabulary)."""
    with _tok_lock:
        info = _tokenizers.get(tokenizer)
        if info is None:
            info = _tokenizers[tokenizer] = _TokenizerInfo(tokenizer)
        return info


class _Compiled:
    """One grammar compiled for one tokenizer: a matcher in its start state, copied for each request."""

    def __init__(self, info: _TokenizerInfo, grammar: str):
        self.info = info
        try:
            matcher = _llg().LLMatcher(info.lltok, grammar, log_level=0, limits=info.limits)
            if not matcher.is_error():  # compute a first mask too: some problems show only there
                probe = torch.zeros((info.vocab_size + 31) // 32, dtype=torch.int32)
                trial = matcher.deep_copy()
                trial.unsafe_compute_mask_ptr(probe.data_ptr(), probe.numel() * 4)
                if trial.is_error():
                    matcher = trial
        except BaseException as e:
            if not _library_failure(e):
                raise
            raise UserError(f"the grammar library failed on it ({type(e).__name__}: {str(e)[:300]})") from None
        if matcher.is_error():
            raise UserError(matcher.get_error().strip()[:1000] or "the grammar cannot be compiled")
        self._start = matcher

    def new_matcher(self):
        with _lock:  # the start state is shared: copy it one thread at a time
            return self._start.deep_copy()


def _compile(info: _TokenizerInfo, key: tuple, make_grammar) -> _Compiled:
    k = (info, *key)
    with _lock:
        hit = _grammars.get(k)
        if hit is not None:
            _grammars.move_to_end(k)
            return hit
    compiled = _Compiled(info, make_grammar())  # outside the lock: a large grammar takes a while
    with _lock:
        _grammars[k] = compiled
        _grammars.move_to_end(k)
        while len(_grammars) > CACHE_SIZE:
            _grammars.popitem(last=False)
    return compiled


def compile_json_schema(tokenizer: Tokenizer, schema: dict | None) -> _Compiled:
    """The compiled grammar of a JSON Schema (None: any JSON object); `UserError` naming the problem."""
    info = tokenizer_info(tokenizer)
    if schema is None:
        schema = ANY_OBJECT
    if not isinstance(schema, dict):
        raise UserError(f"the JSON schema must be an object, not {type(schema).__name__}")
    try:
        text = json.dumps(schema, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as e:
        raise UserError(f"the JSON schema is not valid JSON: {e}") from None

    def grammar() -> str:
        try:
            return _llg().LLMatcher.grammar_from_json_schema(text, defaults=JSON_LAYOUT)
        except BaseException as e:  # llguidance's ValueError, or anything its parser throws
            if not _library_failure(e):
                raise
            raise UserError(f"the JSON schema cannot be compiled: {e}") from None

    try:
        return _compile(info, ("json", text), grammar)
    except UserError as e:
        msg = str(e)
        if not msg.startswith("the JSON schema"):
            msg = f"the JSON schema cannot be used: {msg}"
        raise UserError(msg) from None


def compile_lark(tokenizer: Tokenizer, grammar: str) -> _Compiled:
    """The compiled grammar of a Lark grammar (llguidance's dialect, `%json {...}` included)."""
    info = tokenizer_info(tokenizer)
    if not isinstance(grammar, str) or not grammar.strip():
        raise UserError("the grammar must be a non-empty string")
    try:
        return _compile(info, ("lark", grammar), lambda: _llg().LLMatcher.grammar_from_lark(grammar))
    except UserError as e:
        raise UserError(f"the grammar cannot be used: {e}") from None


class GrammarConstraint:
    """A logits processor that keeps one request's tokens inside a compiled grammar (see the module
    docstring). Call `for_request()` for a fresh one with the same grammar; the engine does so per request."""

    def __init__(self, compiled: _Compiled):
        self._compiled = compiled
        self._matcher = None  # made on first use: the engine copies this object per request first
        self._consumed = 0  # how many of the request's output tokens the matcher has seen
        self._bits: np.ndarray | None = None  # the mask as llguidance writes it: one bit per token, 1 = allowed
        self._stop_only: torch.Tensor | None = None  # (vocab,) bool: all but the end-of-turn tokens forbidden
        self._failed = False

    def for_request(self) -> "GrammarConstraint":
        return GrammarConstraint(self._compiled)

    def _advance(self, output_ids: Sequence[int]) -> None:
        m = self._matcher
        if m is None:
            m = self._matcher = self._compiled.new_matcher()
        if len(output_ids) < self._consumed:  # not the output it has followed: start again from it
            m.reset()
            self._consumed = 0
        if len(output_ids) > self._consumed:
            new = list(output_ids[self._consumed:])
            self._consumed = len(output_ids)
            if not m.consume_tokens(new):
                self._fail("the grammar refused a generated token")

    def _fail(self, why: str) -> None:
        if not self._failed:
            self._failed = True
            log.warning("constrained decoding: %s; the reply ends there", why)

    def _stop_mask(self, vocab: int, device: torch.device) -> torch.Tensor:
        """(vocab,) bool, True where forbidden: every token but the end-of-turn ones."""
        if self._stop_only is None or self._stop_only.numel() != vocab or self._stop_only.device != device:
            mask = torch.ones(vocab, dtype=torch.bool)
            mask[[i for i in self._compiled.info.stop_ids if i < vocab]] = False
            self._stop_only = mask.to(device)
        return self._stop_only

    def _forbidden(self, vocab: int, device: torch.device) -> torch.Tensor:
        """(vocab,) bool on `device`, True where the grammar forbids the token."""
        m = self._matcher
        if self._failed or m.is_stopped():  # complete with nothing more to add, or in error: end the turn
            return self._stop_mask(vocab, device)
        if self._bits is None:
            self._bits = np.zeros((self._compiled.info.vocab_size + 31) // 32, dtype=np.int32)
        m.unsafe_compute_mask_ptr(self._bits.ctypes.data, self._bits.nbytes)
        if m.is_error():
            return self._stop_mask(vocab, device)
        # bit i of word w is token 32 w + i: in little-endian bytes, byte by byte with the low bit first
        forbidden = np.unpackbits((~self._bits).astype("<i4", copy=False).view(np.uint8), bitorder="little")
        if forbidden.size >= vocab:
            forbidden = forbidden[:vocab]
        else:  # the model's rows beyond the tokenizer's vocabulary
            forbidden = np.concatenate([forbidden, np.ones(vocab - forbidden.size, dtype=np.uint8)])
        return torch.from_numpy(forbidden.view(np.bool_)).to(device)

    def __call__(self, output_ids: Sequence[int], logits: torch.Tensor) -> torch.Tensor:
        vocab, device = logits.shape[-1], logits.device
        try:
            self._advance(output_ids)
            forbidden = self._forbidden(vocab, device)
        except BaseException as e:  # never the batch's failure: this request ends, the others go on
            if not _library_failure(e):
                raise
            self._fail(f"{type(e).__name__} while computing the mask")
            forbidden = self._stop_mask(vocab, device)
        if device.type == "cpu" and logits.dtype == torch.float32:  # numpy: one thread, no pool to wake
            return torch.from_numpy(np.where(forbidden.numpy(), np.float32("-inf"), logits.detach().numpy()))
        return torch.where(forbidden, float("-inf"), logits)


def json_constraint(tokenizer: Tokenizer, schema: dict | None = None) -> GrammarConstraint:
    """A logits processor keeping a request's output valid JSON for `schema` (None: any JSON object).
    Raises `UserError` naming the problem when the schema cannot be compiled. Compiling may take a while
    for a large schema (cached afterwards): call it off an event loop."""
    return GrammarConstraint(compile_json_schema(tokenizer, schema))


def lark_constraint(tokenizer: Tokenizer, grammar: str) -> GrammarConstraint:
    """A logits processor keeping a request's output inside a Lark grammar (llguidance's dialect; a rule
    may be `%json {schema}`). Raises `UserError` naming the problem when it cannot be compiled."""
    return GrammarConstraint(compile_lark(tokenizer, grammar))


__all__ = ["json_constraint", "lark_constraint", "compile_json_schema", "compile_lark", "GrammarConstraint",
           "tokenizer_info", "CACHE_SIZE", "JSON_LAYOUT"]
