"""Byte-level BPE tokenizer and the one chat template every stage uses.

Notable choices:
- Built on Hugging Face `tokenizers` (training and encoding); we never write a BPE ourselves.
- Loads from a `tokenizer.json`, a checkpoint directory, or the token list + merges of a GGUF file.
- `render_chat` is the single place a conversation becomes token ids. SFT, the reward model, PPO,
  serving and evaluation all call it, so train and serve can never disagree on the format. It renders the
  model's own Jinja template (Hugging Face conventions) or ChatML when the model has none, and returns an
  assistant mask computed from character offsets, so the mask is right whatever the template looks like.
  Gemma's template (`<start_of_turn>user ... <end_of_turn>`, the system message folded into the first user
  turn) is ours too (`CHAT_TEMPLATES`): a Gemma 3 base GGUF carries none, and its turn tokens are in the vocabulary.
- A GGUF's SentencePiece vocabulary (Gemma's) becomes a `tokenizers` BPE with byte fallback, merges ranked
  by the file's token order (as transformers' GGUF converter does), so encoding matches transformers' and
  streaming decodes `<0xNN>` byte tokens only once a character is whole.
- Function calling renders here too: `render_chat(messages, tools=...)` hands the tools, the assistant's
  `tool_calls` and the `tool` messages to a template with a tool format of its own (one that reads `tools`),
  and otherwise writes them in `tools_format`'s format (Hermes / Qwen 2.5 style) as message content, so
  the same rules (content is text, the mask covers the calls) hold. In a template's own format the tool
  fields are its text, so a control token's text in them is refused. An assistant message with calls and
  no content has no content slot; its turn is the generation prompt between its neighbours' slots.
- Rendering is linear in the conversation: the template is rendered a fixed number of times (the real
  conversation, and once or twice with a unique placeholder in place of each message's content), and the
  placeholders show where each message's content sits in the text. Content the template trims is found
  too; a template that rewrites content in any other way is refused with a clear error.
- Only the template produces control tokens. Message content is text: `<|im_start|>` typed in a message
  encodes as ordinary tokens, so no one can forge a system or assistant turn. When no content holds a
  special token's text, the ids are exactly those of encoding the rendered text (Hugging Face's
  `apply_chat_template`); otherwise the text is cut at the template's own special tokens and the pieces
  between them are encoded with special tokens read as text (`encode_special_tokens`). Tokens count as
  control tokens when the tokenizer marks them special, as `tokenizers` does.
- `StreamDecoder` turns a token stream into text deltas that never split a UTF-8 character (a Chinese
  character is often two or three byte-level tokens).
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from .errors import CheckpointError, UserError

CHAT_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Gemma's turns: "model" for the assistant, the system message folded into the first user turn (Gemma has no
# system role), tool results as user turns, each content trimmed as Gemma's own template does
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\n' }}"
    "{% if loop.first %}{{ first_user_prefix }}{% endif %}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if loop_messages | length == 0 and first_user_prefix %}"
    "{{ '<start_of_turn>user\n' + first_user_prefix + '<end_of_turn>\n' }}{% endif %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

CHAT_TEMPLATES = {"chatml": CHATML_TEMPLATE, "gemma": GEMMA_TEMPLATE}

ROLES = ("system", "user", "assistant", "tool")


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
        self._text_hf: HFTokenizer | None = None  # a copy that reads special tokens' text as plain text
        self._special_set: frozenset[int] | None = None
        self._tool_format: bool | None = None

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
        for t in (self.eos_token, "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
            i = self.token_to_id(t) if t else None
            if i is not None and i not in ids:
                ids.append(i)
        return ids

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the control tokens (the added tokens marked special), read once."""
        if self._special_set is None:
            self._special_set = frozenset(i for i, t in self.hf.get_added_tokens_decoder().items() if t.special)
        return self._special_set

    # --- encode / decode ------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def _text_tokenizer(self) -> HFTokenizer:
        """A copy of the tokenizer that encodes special tokens' text as ordinary text (a copy, because the
        flag is the tokenizer's state and other threads encode with the original at the same time)."""
        if self._text_hf is None:  # two threads racing here build two equal copies: harmless
            hf = HFTokenizer.from_str(self.hf.to_str())
            hf.encode_special_tokens = True
            self._text_hf = hf
        return self._text_hf

    def encode_content(self, text: str) -> list[int]:
        """Token ids of `text` as message content: control tokens' text is read as text (as `render_chat`
        encodes what messages say)."""
        return self._text_tokenizer().encode(text, add_special_tokens=False).ids

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

    def render_text(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    tools: Sequence[dict] | None = None) -> str:
        """The template's text for a conversation. For token ids use `render_chat`: encoding this text would
        read control-token text typed inside a message as control tokens. `tools` goes to the template as
        Hugging Face passes it (only a template with its own tool format reads it)."""
        return self._template().render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                       tools=list(tools) if tools else None,
                                       bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    @property
    def has_tool_format(self) -> bool:
        """Whether the chat template has a tool format of its own (it reads the `tools` variable)."""
        if self._tool_format is None:
            from jinja2 import meta
            from jinja2.sandbox import ImmutableSandboxedEnvironment
            ast = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).parse(self.chat_template)
            self._tool_format = "tools" in meta.find_undeclared_variables(ast)
        return self._tool_format

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                    tools: Sequence[dict] | None = None) -> ChatRendering:
        """Render a conversation to token ids and an assistant-token mask (see module docstring).

        The mask covers each assistant turn from the end of the generation prompt (what the model is given
        before it answers) through its end-of-turn marker, not the whitespace after it. `tools` (OpenAI's
        list), tool calls and tool results are written in the template's own tool format when it has one,
        else in `tools_format`'s, as message content."""
        from .tools_format import ToolFormatError, to_plain_messages, tool_strings, validate_tools
        messages = validate_messages(messages)
        tools = validate_tools(tools)
        if self.has_tool_format:
            # the template writes the tools and calls as its own text: no control token may hide in them
            specials = [t.content for i, t in self.hf.get_added_tokens_decoder().items() if t.special]
            for param, value in tool_strings(messages, tools):
                if hit := next((t for t in specials if t and t in value), None):
                    raise ToolFormatError(param, f"contains the control token {hit!r}")
        else:
            messages, tools = to_plain_messages(messages, tools), None
        text = self.render_text(messages, add_generation_prompt, tools)
        slots, gen = self._content_slots(messages, text, add_generation_prompt, tools)
        ids, offsets = self._encode_rendered(text, slots)
        spans = self._assistant_spans(messages, text, slots, gen)
        mask = [0] * len(ids)
        if spans and ids:
            # a token is masked when it lies inside a span: the first span ending at or after the token's end
            import numpy as np
            off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            starts, ends = np.asarray(spans, dtype=np.int64).T
            k = np.searchsorted(ends, off[:, 1], side="left")
            inside = k < len(spans)
            kk = np.minimum(k, len(spans) - 1)
            mask = (inside & (off[:, 0] >= starts[kk]) & (off[:, 1] > off[:, 0])).astype(int).tolist()
        if self.add_bos and self.bos_id is not None and (not ids or ids[0] != self.bos_id):
            ids, mask = [self.bos_id] + ids, [0] + mask
        return ChatRendering(ids=ids, assistant_mask=mask, text=text)

    def _content_slots(self, messages: list[dict], text: str, add_generation_prompt: bool,
                       tools: Sequence[dict] | None = None) -> tuple[list[tuple[int, int, int]], str]:
        """Where the template put each message's content in `text`, and the template's generation prompt.

        Slots are (message index, start, end), left to right; everything between them is the template's
        own text. A message may have no slot (a template that drops it) or several (one that repeats it).
        An assistant message with tool calls and no content keeps its empty content (templates test it), so
        it has no slot. The generation prompt is what add_generation_prompt appends (only looked up when
        the conversation has an assistant message)."""
        nonce = secrets.token_hex(8)
        placeholder = re.compile(re.escape(f"[[{nonce}:") + r"(\d+)\]\]")
        marked_messages = [{**m, "content": "" if m.get("tool_calls") and not m["content"] else f"[[{nonce}:{i}]]"}
                           for i, m in enumerate(messages)]
        marked = self.render_text(marked_messages, add_generation_prompt, tools)
        template_text, order, last = [], [], 0
        for m in placeholder.finditer(marked):
            template_text.append(marked[last:m.start()])
            order.append(int(m.group(1)))
            last = m.end()
        template_text.append(marked[last:])
        # The real text must be the template's text with each placeholder replaced by that message's
        # content, as is or trimmed; lengths come from the content, so content cannot shift a boundary.
        refuse = UserError("the chat template rewrites message content (beyond trimming whitespace), so its "
                           "turns cannot be located; use a template that inserts content as is")
        if not text.startswith(template_text[0]) or any(i >= len(messages) for i in order):
            raise refuse
        slots = []
        pos = len(template_text[0])
        for k, i in enumerate(order):
            c, after = messages[i]["content"], template_text[k + 1]
            for cand in dict.fromkeys((c, c.strip(), c.lstrip(), c.rstrip(), c.strip("\n"), c.lstrip("\n"),
                                       c.rstrip("\n"))):
                if text.startswith(cand, pos) and text.startswith(after, pos + len(cand)):
                    break
            else:
                raise refuse
            slots.append((i, pos, pos + len(cand)))
            pos += len(cand) + len(after)
        if pos != len(text):
            raise refuse
        gen = ""
        if any(m["role"] == "assistant" for m in messages):
            other = self.render_text(marked_messages, not add_generation_prompt, tools)
            with_prompt, without = (marked, other) if add_generation_prompt else (other, marked)
            gen = with_prompt[len(without):] if with_prompt.startswith(without) else ""
        return slots, gen

    def _encode_rendered(self, text: str, slots: list[tuple[int, int, int]]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets of a rendered conversation; special tokens only from the template."""
        special = self.special_ids
        enc = self.hf.encode_batch([text], add_special_tokens=False)[0]  # the batch call releases the GIL
        ids, offsets = enc.ids, enc.offsets
        k = 0
        clean = True
        for a, b in [off for tid, off in zip(ids, offsets) if tid in special]:
            while k < len(slots) and slots[k][2] <= a:
                k += 1
            if k < len(slots) and slots[k][1] < b:  # a special token overlapping a message's content
                clean = False
                break
        if clean:
            return ids, offsets
        # cut at the template's own special tokens; encode what lies between with specials read as text
        template = [(slots[k - 1][2] if k else 0, slots[k][1] if k < len(slots) else len(text))
                    for k in range(len(slots) + 1)]
        cuts = []
        for (start, _), e in zip(template, self.hf.encode_batch([text[a:b] for a, b in template],
                                                                add_special_tokens=False)):
            cuts += [(start + a, start + b, tid) for tid, (a, b) in zip(e.ids, e.offsets) if tid in special]
        bounds = [0] + [x for a, b, _ in cuts for x in (a, b)] + [len(text)]
        chunks = [(bounds[2 * j], bounds[2 * j + 1]) for j in range(len(cuts) + 1)]
        encs = self._text_tokenizer().encode_batch([text[a:b] for a, b in chunks], add_special_tokens=False)
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for j, ((start, _), e) in enumerate(zip(chunks, encs)):
            ids += e.ids
            offsets += [(start + a, start + b) for a, b in e.offsets]
            if j < len(cuts):
                ids.append(cuts[j][2])
                offsets.append(cuts[j][:2])
        return ids, offsets

    def _assistant_spans(self, messages: list[dict], text: str, slots: list[tuple[int, int, int]],
                         gen: str) -> list[tuple[int, int]]:
        """Character spans to train on: from the end of the generation prompt `gen` before each assistant
        message (its content's start where the template has none) through the end-of-turn marker after it.
        Both are searched for in the template's own text only. An assistant message without a slot (tool
        calls, no content) is the n-th generation prompt in the template text between its neighbours' slots."""
        count: dict[int, int] = {}
        for i, _, _ in slots:
            count[i] = count.get(i, 0) + 1
        slotless = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant" and count.get(i) != 1:
                if count.get(i) is None and m.get("tool_calls") and gen:
                    slotless.append(i)
                    continue
                raise UserError(f"the chat template repeats or drops assistant message {i}; cannot locate it")
        spans = []

        def end_of_turn(b: int, limit: int) -> int:
            after = text[b:limit]
            for marker in ("<|im_end|>", self.eos_token or "", "<|eot_id|>", "<end_of_turn>"):
                if marker and (j := after.find(marker)) != -1:
                    return b + j + len(marker)
            return b

        for k, (i, a, b) in enumerate(slots):
            if messages[i]["role"] != "assistant":
                continue
            before = text[slots[k - 1][2] if k else 0:a]
            cut = before.rfind(gen) if gen else -1
            start = a - len(before) + cut + len(gen) if cut != -1 else a
            spans.append((start, end_of_turn(b, slots[k + 1][1] if k + 1 < len(slots) else len(text))))
        seen: dict[int, int] = {}  # region (index of the slot after it) -> generation prompts used in it
        for i in slotless:
            k = next((k for k, s in enumerate(slots) if s[0] > i), len(slots))
            lo, hi = slots[k - 1][2] if k else 0, slots[k][1] if k < len(slots) else len(text)
            pos = lo
            for _ in range(seen.get(k, 0) + 1):
                j = text.find(gen, pos, hi)
                if j == -1:
                    raise UserError(f"the chat template drops assistant message {i}; cannot locate it")
                pos = j + len(gen)
            seen[k] = seen.get(k, 0) + 1
            spans.append((pos, end_of_turn(pos, hi)))
        return sorted(spans)

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
        """Build from GGUF metadata (`tokenizer.ggml.*`): a byte-level BPE with its merges and specials
        ("gpt2"), or a SentencePiece vocabulary ("llama", as Gemma's) as a byte-fallback BPE."""
        model = meta.get("tokenizer.ggml.model")
        if model not in ("gpt2", "llama"):
            raise CheckpointError(f"GGUF tokenizer type {model!r} is not supported (byte-level BPE 'gpt2' or "
                                  f"SentencePiece 'llama')")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if model == "llama":
            hf, tokens = _sentencepiece_bpe(tokens, types, meta.get("tokenizer.ggml.merges"),
                                            meta.get("tokenizer.ggml.unknown_token_id"))
        else:
            merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
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

        template = meta.get("tokenizer.chat_template")
        if template is None and meta.get("general.architecture") == "gemma3":
            template = GEMMA_TEMPLATE  # a base model's file carries none; Gemma's turns are in its vocabulary
        return cls(hf, bos_token=special("tokenizer.ggml.bos_token_id"),
                   eos_token=special("tokenizer.ggml.eos_token_id"),
                   pad_token=special("tokenizer.ggml.padding_token_id"),
                   chat_template=template,
                   # SentencePiece vocabularies add BOS unless the file says otherwise (as llama.cpp does)
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama")))


def _sentencepiece_bpe(tokens: list[str], types: Sequence[int], merges: Sequence[str] | None,
                       unk_id: int | None) -> tuple[HFTokenizer, list[str]]:
    """A SentencePiece BPE vocabulary (GGUF `llama` tokenizer) as a `tokenizers` BPE with byte fallback.

    Spaces are "▁" (a normalizer writes them, the decoder reads them back); bytes outside the vocabulary are
    the `<0xNN>` tokens. Files without merges (Gemma's) get them from the vocabulary: every split of a token
    into two tokens is a merge, ranked by the token's place in the file (SentencePiece's own order, which
    the scores do not follow), longer left part first. Tokens of spaces alone are stored with real spaces
    and are spelled with "▁" here, as the normalizer writes them. Returns the tokenizer and its tokens."""
    given, tokens = tokens, ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    if merges:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        pairs = []
        for t in tokens:
            pairs += [(t[:k], t[k:]) for k in range(len(t) - 1, 0, -1) if t[:k] in vocab and t[k:] in vocab]
    unk = tokens[unk_id] if unk_id is not None and 0 <= int(unk_id) < len(tokens) else None
    hf = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True))
    hf.normalizer = normalizers.Replace(" ", "\u2581")
    hf.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    hf.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    # control tokens (type 3) are special; user-defined ones (type 4: "\n", "\n\n", ...) are matched whole
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3])
    hf.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty, g in zip(tokens, types, given)
                   if ty == 4 and t == g])
    return hf, tokens


def validate_messages(messages: Sequence[dict]) -> list[dict]:
    """Check a conversation's shape; raise UserError saying which message is wrong.

    Returns `{"role", "content"}` messages; an assistant message's `tool_calls` and a tool message's
    `tool_call_id` are kept, normalised (`tools_format`), and each tool message must answer a call of the
    assistant message before it. An assistant message with tool calls may have null content."""
    from .tools_format import ToolFormatError, check_tool_answers, validate_tool_calls
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
        calls = m.get("tool_calls")
        if calls is not None and role != "assistant":
            raise ToolFormatError(f"messages.{i}.tool_calls", f"only assistant messages make tool calls, not {role}")
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise UserError(f"message {i} content must be a string")
        msg = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = validate_tool_calls(calls, f"messages.{i}.tool_calls")
        if role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise ToolFormatError(f"messages.{i}.tool_call_id", "a tool message needs the tool_call_id of "
                                                                    "the call it answers")
            msg["tool_call_id"] = tid
        out.append(msg)
    check_tool_answers(out)
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
