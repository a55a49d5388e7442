"""The tokenizer over HTTP, in vLLM's shape: `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info`.

Clients that count or cut tokens against the served model use these: lm-evaluation-harness's API models
(`tokenizer_backend="remote"`) read /tokenizer_info (`eos_token`, `bos_token`, `pad_token`,
`chat_template`), then tokenize and detokenize through the server.

Notable choices:
- Paths and bodies are vLLM's, at the server's root (not under /v1), with `model` optional:
  - `/tokenize` takes `{prompt}` (a raw prompt, encoded exactly as /v1/completions encodes it: the control
    tokens it spells out are control tokens; `add_special_tokens`, default true, adds the tokenizer's BOS
    when it has one) or `{messages, add_generation_prompt}` (a conversation rendered by the one chat
    template; with the generation prompt, the default, the ids are exactly the prompt /v1/chat/completions
    gives the model, so `count` is its `usage.prompt_tokens`). It answers
    `{count, max_model_len, tokens, token_strs}`; `token_strs` (the tokens' own strings) only with
    `return_token_strs`. A prompt longer than the context is tokenized all the same: clients split long
    documents themselves.
  - `/detokenize` `{tokens}` -> `{prompt}`: the text, control tokens included (as vLLM decodes). Ids outside
    the vocabulary are a 400 naming `tokens`.
  - `/tokenizer_info` is what `tokenizer_config.json` says (`Tokenizer.save` writes the same keys), plus
    `model_max_length` (the served context) and `vocab_size`.
- Auth is the API's (`openai_api.api_user`). Rendering, encoding and decoding run in a worker thread.
- Messages are the chat API's own `ChatMessage` and are turned into the template's input by the same
  function (`openai_api._chat_messages`), so the two never render a conversation differently. `tools` and
  `continue_final_message` are refused with a 400 rather than ignored.
- With `--upstream` the tokenizer is the upstream's: these routes answer 501 `needs_local_model`.
"""
from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from .auth import CurrentUser
from .errors import APIError, error_responses
from .openai_api import ChatMessage, _chat_messages, _Strict, api_user, check_message_count, ctx_of, render_prompt
from .validation import Text

router = APIRouter()

MAX_DETOKENIZE_TOKENS = 1 << 18  # ids per /detokenize request (the body cap bounds /tokenize's text)


class TokenizeRequest(_Strict):
    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_generation_prompt: bool = True  # messages only
    continue_final_message: bool = False  # messages only; not supported
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (vLLM's)
    return_token_strs: bool = False
    tools: list[dict] | None = None  # not supported


class DetokenizeRequest(_Strict):
    model: Text | None = None
    tokens: list[int] = Field(max_length=MAX_DETOKENIZE_TOKENS)


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    tokenizer_class: str
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    add_bos_token: bool
    chat_template: str
    model_max_length: int
    vocab_size: int


async def _local_tokenizer(request: Request, route: str, model: str | None):
    """The served model's tokenizer: 501 with --upstream, 404 for another model, 503 if it failed to load."""
    ctx = ctx_of(request)
    ctx.require_local_model(route)
    ctx.check_model(model)
    await ctx.host.ready()
    return ctx, ctx.host.tokenizer


def _unsupported(param: str, what: str) -> APIError:
    return APIError(400, f"{param}: {what} is not supported by /tokenize.", param=param, code="unsupported_parameter")


@router.post("/tokenize", responses={200: {"model": TokenizeResponse}, **error_responses(400, 401, 404, 501, 503)})
async def tokenize(body: TokenizeRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    """Token ids of a raw `prompt`, or of `messages` rendered by the chat template (see the module notes)."""
    if (body.prompt is None) == (body.messages is None):
        raise APIError(400, "Send either `prompt` (text) or `messages` (a conversation), not both or neither.",
                       param="messages" if body.messages is not None else "prompt")
    if body.tools:
        raise _unsupported("tools", "rendering tools")
    if body.continue_final_message:
        raise _unsupported("continue_final_message", "continue_final_message")
    ctx, tok = await _local_tokenizer(request, "/tokenize", body.model)
    if body.messages is not None:
        check_message_count(ctx, len(body.messages))
        messages = _chat_messages(body)
        if body.add_generation_prompt:  # what /v1/chat/completions renders, by the same call
            ids = await render_prompt(ctx, messages)
        else:
            ids = await asyncio.to_thread(lambda: tok.render_chat(messages, add_generation_prompt=False).ids)
        if body.add_special_tokens and tok.bos_id is not None and ids[:1] != [tok.bos_id]:
            ids = [tok.bos_id] + ids
    elif body.add_special_tokens is False:
        ids = await asyncio.to_thread(tok.encode, body.prompt, False)
    else:  # what /v1/completions encodes
        ids = await asyncio.to_thread(ctx.host.encode_text, body.prompt)
    strs = await asyncio.to_thread(lambda: [tok.id_to_token(i) or "" for i in ids]) if body.return_token_strs else None
    return {"count": len(ids), "max_model_len": ctx.host.context_length, "tokens": ids, "token_strs": strs}


@router.post("/detokenize", responses={200: {"model": DetokenizeResponse},
                                       **error_responses(400, 401, 404, 501, 503)})
async def detokenize(body: DetokenizeRequest, request: Request, _user: CurrentUser = Depends(api_user)):
    """The text of token ids (control tokens included)."""
    ctx, tok = await _local_tokenizer(request, "/detokenize", body.model)
    vocab = ctx.host.vocab_size
    bad = next((i for i, t in enumerate(body.tokens) if not 0 <= t < vocab), None)
    if bad is not None:
        raise APIError(400, f"tokens: token ids must be in [0, {vocab}); tokens[{bad}] is {body.tokens[bad]}.",
                       param="tokens", code="invalid_value")
    return {"prompt": await asyncio.to_thread(tok.decode, body.tokens, False)}


@router.get("/tokenizer_info", responses={200: {"model": TokenizerInfo}, **error_responses(401, 501, 503)})
async def tokenizer_info(request: Request, _user: CurrentUser = Depends(api_user)):
    """The tokenizer's configuration, as its tokenizer_config.json gives it."""
    ctx, tok = await _local_tokenizer(request, "/tokenizer_info", None)
    return {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
            "pad_token": tok.pad_token, "add_bos_token": bool(tok.add_bos), "chat_template": tok.chat_template,
            "model_max_length": ctx.host.context_length, "vocab_size": tok.vocab_size}
