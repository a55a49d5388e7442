"""Byte-level BPE tokenizer and the one chat template every stage uses.

Notable choices:
- Built on Hugging Face `tokenizers` (training and encoding); we never write a BPE ourselves.
- Loads from a `tokenizer.json`, a checkpoint directory, or the token list + merges of a GGUF file.
- `render_chat` is the single place a conversation becomes token ids. SFT, the reward model, PPO,
  serving and evaluation all call it, so train and serve can never disagree on the format. It renders the
  model's own Jinja template (Hugging Face conventions) or ChatML when the model has none, and returns an
  assistant mask computed from character offsets, so the mask is right whatever the template looks like.
- `StreamDecoder` turns a token stream into text deltas that never split a UTF-8 character (a Chinese
  character is often two or three byte-level tokens).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .errors import CheckpointError, UserError

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ROLES = ("system", "user", "assistant")


@dataclass
class ChatRendering:
    ids: list[int]
    assistant_mask: list[int]  # 1 where the token is assistant content or its end-of-turn token
    text: str


def _byte_level_pre_tokenizer(individual_digits: bool = True):
    parts = []
    if individual_digits:
        parts.append(pre_tokenizers.Digits(individual_digits=True))
    parts.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    return pre_tokenizers.Sequence(parts)


class Tokenizer:
    """A `tokenizers.Tokenizer` plus the special tokens and chat template that go with a model."""

    def __init__(self, hf: HFTokenizer, bos_token: str | None = None, eos_token: str | None = None,
                 pad_token: str | None = None, chat_template: str | None = None, add_bos: bool = False):
        self.hf = hf
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template or CHATML_TEMPLATE
        self.add_bos = add_bos
        self._compiled_template = None

    # --- basic properties ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.hf.id_to_token(i)

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_id(self) -> int:
        for t in (self.pad_token, "<|pad|>", self.eos_token):
            if t and self.token_to_id(t) is not None:
                return self.token_to_id(t)
        return 0

    @property
    def stop_token_ids(self) -> list[int]:
        """Tokens that end an assistant turn: the eos token and the chat end-of-turn markers."""
        ids = []
        for t in (self.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            i = self.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_ids(self) -> set[int]:
        return {self.token_to_id(t.content) for t in self.hf.get_added_tokens_decoder().values() if t.special}

    # --- encode / decode ------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special: bool = True) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    # --- chat template ------------------------------------------------------------------------
    def _template(self):
        if self._compiled_template is None:
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            def raise_exception(message):
                raise UserError(f"chat template: {message}")

            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = raise_exception
            self._compiled_template = env.from_string(self.chat_template)
        return self._compiled_template

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        return self._template().render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> ChatRendering:
        """Render a conversation to token ids and an assistant-token mask (see module docstring)."""
        messages = validate_messages(messages)
        text = self.render_text(messages, add_generation_prompt)
        # Character spans of assistant turns: the template's text grows by exactly one turn per message,
        # so the span of turn i is what rendering messages[:i+1] adds after the generation prompt of [:i].
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self.render_text(messages[:i], add_generation_prompt=True)
            upto = self.render_text(messages[: i + 1], add_generation_prompt=False)
            if not text.startswith(upto) or not upto.startswith(prefix):
                raise UserError("chat template is not prefix-stable; cannot locate assistant turns")
            start, end = len(prefix), len(upto)
            # train on the content and the end-of-turn marker, not on the whitespace after it
            body = upto[start:end]
            for marker in ("<|im_end|>", self.eos_token or "", "<|eot_id|>"):
                if marker:
                    cut = body.rfind(marker)
                    if cut != -1:
                        end = start + cut + len(marker)
                        break
            spans.append((start, end))
        enc = self.hf.encode(text, add_special_tokens=False)
        ids = list(enc.ids)
        mask = [0] * len(ids)
        for j, (a, b) in enumerate(enc.offsets):
            if b <= a:
                continue
            for s, e in spans:
                if a >= s and b <= e:
                    mask[j] = 1
                    break
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids, mask = [self.bos_id] + ids, [0] + mask
        return ChatRendering(ids=ids, assistant_mask=mask, text=text)

    # --- persistence --------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        from .fetch import atomic_write_text
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_text(d / "tokenizer.json", self.hf.to_str())
        cfg = {"bos_token": self.bos_token, "eos_token": self.eos_token, "pad_token": self.pad_token,
               "add_bos_token": self.add_bos, "chat_template": self.chat_template,
               "tokenizer_class": "PreTrainedTokenizerFast"}
        atomic_write_text(d / "tokenizer_config.json", json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Load from a directory holding tokenizer.json (+ tokenizer_config.json) or a tokenizer.json file."""
        p = Path(path)
        tj = p / "tokenizer.json" if p.is_dir() else p
        if not tj.exists():
            raise CheckpointError(f"{tj}: no tokenizer.json")
        try:
            hf = HFTokenizer.from_file(str(tj))
        except Exception as e:
            raise CheckpointError(f"{tj}: not a valid tokenizer.json ({e})") from e
        cfg_path = tj.parent / "tokenizer_config.json"
        cfg = {}
        if cfg_path.exists():
            try:
                cfg = json.loads(cfg_path.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from e
        tmpl_file = tj.parent / "chat_template.jinja"
        template = cfg.get("chat_template")
        if template is None and tmpl_file.exists():
            template = tmpl_file.read_text()

        def tok(v):
            return v.get("content") if isinstance(v, dict) else v

        return cls(hf, bos_token=tok(cfg.get("bos_token")), eos_token=tok(cfg.get("eos_token")),
                   pad_token=tok(cfg.get("pad_token")), chat_template=template,
                   add_bos=bool(cfg.get("add_bos_token", False)))

    @classmethod
    def from_gguf_fields(cls, meta: dict) -> "Tokenizer":
        """Build from GGUF metadata (`tokenizer.ggml.*`): a byte-level BPE with its merges and specials."""
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise CheckpointError(f"GGUF tokenizer type {model!r} is not supported (only byte-level BPE 'gpt2')")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        vocab = {t: i for i, t in enumerate(tokens)}
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        hf.pre_tokenizer = _byte_level_pre_tokenizer(individual_digits=True)
        hf.decoder = decoders.ByteLevel()
        # control tokens (type 3) are special: matched whole in text, skipped when decoding
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(tokens, types) if ty == 3])

        def special(key):
            i = meta.get(key)
            return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

        return cls(hf, bos_token=special("tokenizer.ggml.bos_token_id"),
                   eos_token=special("tokenizer.ggml.eos_token_id"),
                   pad_token=special("tokenizer.ggml.padding_token_id"),
                   chat_template=meta.get("tokenizer.chat_template"),
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)))


def validate_messages(messages: Sequence[dict]) -> list[dict]:
    """Check a conversation's shape; raise UserError saying which message is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserError("a conversation must be a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise UserError(f"message {i} is not an object")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise UserError(f"message {i} has role {role!r}; expected one of {', '.join(ROLES)}")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        if not isinstance(content, str):
            raise UserError(f"message {i} content must be a string")
        out.append({"role": role, "content": content})
    return out


def train_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS,
              min_frequency: int = 2, show_progress: bool = False, chat_template: str | None = None) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style, digits split) with the chat special tokens.

    Every byte is in the initial alphabet, so any text — Chinese included — encodes without unknowns.
    """
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = _byte_level_pre_tokenizer(individual_digits=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(special_tokens), show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(texts, trainer=trainer)
    eos = "<|endoftext|>" if "<|endoftext|>" in special_tokens else special_tokens[0]
    pad = "<|pad|>" if "<|pad|>" in special_tokens else eos
    return Tokenizer(hf, bos_token=None, eos_token=eos, pad_token=pad, chat_template=chat_template or CHATML_TEMPLATE)


class StreamDecoder:
    """Incremental detokenizer: `push(token_id)` returns only text that is complete UTF-8.

    It decodes a short window of recent tokens and emits the new suffix once it no longer ends in a
    replacement character, so multi-token characters are held back until whole.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special: bool = True):
        self.tok = tokenizer
        self.skip_special = skip_special
        self.ids: list[int] = []
        self.prefix_offset = 0  # start of the decode window
        self.read_offset = 0  # tokens up to here have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        prefix_text = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], self.skip_special)
        new_text = self.tok.decode(self.ids[self.prefix_offset:], self.skip_special)
        if new_text.endswith("\ufffd") or len(new_text) <= len(prefix_text):
            return ""
        delta = new_text[len(prefix_text):]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return delta

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end of generation)."""
        prefix_text = self.tok.decode(self.ids[self.prefix_offset:self.read_offset], self.skip_special)
        new_text = self.tok.decode(self.ids[self.prefix_offset:], self.skip_special)
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text):] if len(new_text) > len(prefix_text) else ""
