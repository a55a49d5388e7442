"""Structured output through the real server: `response_format` JSON enforced by grammar-constrained decoding.

The official `openai` SDK talks to `alignchat serve` subprocesses. The tiny random model writes noise, so a
reply that validates shows the grammar at work, not the model; the default model (SmolLM2-135M-Instruct)
shows it with a real model, through `client.chat.completions.parse(response_format=PydanticModel)`.
Sampled requests are seeded, so every run sends and checks the same replies.
"""
from __future__ import annotations

import concurrent.futures as cf
import json

import httpx
import jsonschema
import openai
import pytest
import torch
from pydantic import BaseModel, Field

from serve_support import ServerProcess

TINY = "tiny"
TINY_BUDGET = 200  # tokens: the tiny model's context is 256

# Twenty schemas with bounded output (strings with maxLength, arrays with maxItems, bounded numbers), so a
# model that writes noise still finishes each within TINY_BUDGET tokens.
SCHEMAS = [
    # a flat object
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 10},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["name", "age"], "additionalProperties": False},
    # nested objects
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "id": {"type": "integer", "minimum": 1, "maximum": 1000},
        "profile": {"type": "object", "properties": {"nick": {"type": "string", "maxLength": 8},
                                                     "active": {"type": "boolean"}},
                    "required": ["nick", "active"], "additionalProperties": False}},
        "required": ["id", "profile"], "additionalProperties": False}},
     "required": ["user"], "additionalProperties": False},
    # an array of integers with min/max items
    {"type": "object", "properties": {"values": {"type": "array", "minItems": 2, "maxItems": 4,
                                                 "items": {"type": "integer", "minimum": -10, "maximum": 10}}},
     "required": ["values"], "additionalProperties": False},
    # an array of objects with bounded numbers
    {"type": "object", "properties": {"points": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"x": {"type": "number", "minimum": 0, "maximum": 1},
                                         "y": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["x", "y"], "additionalProperties": False}}},
     "required": ["points"], "additionalProperties": False},
    # a string enum
    {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]}},
     "required": ["color"], "additionalProperties": False},
    # Chinese keys, enum values and description
    {"type": "object", "description": "一个中国城市", "properties": {
        "城市": {"type": "string", "enum": ["北京", "上海", "广州"], "description": "城市名称"},
        "人口": {"type": "integer", "minimum": 1, "maximum": 30000000, "description": "人口数量"}},
     "required": ["城市", "人口"], "additionalProperties": False},
    # exclusive integer bounds
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}},
     "required": ["n"], "additionalProperties": False},
    # number bounds, negative and fractional
    {"type": "object", "properties": {"celsius": {"type": "number", "minimum": -40.5, "maximum": 50}},
     "required": ["celsius"], "additionalProperties": False},
    # booleans
    {"type": "object", "properties": {k: {"type": "boolean"} for k in ("read", "write", "admin")},
     "required": ["read", "write", "admin"], "additionalProperties": False},
    # required and optional properties
    {"type": "object", "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 9},
                                      "label": {"type": "string", "maxLength": 5},
                                      "hidden": {"type": "boolean"}},
     "required": ["id"], "additionalProperties": False},
    # a string pattern
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}},
     "required": ["code"], "additionalProperties": False},
    # constants
    {"type": "object", "properties": {"version": {"const": 2}, "kind": {"const": "report"}},
     "required": ["version", "kind"], "additionalProperties": False},
    # anyOf
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5},
                                                          {"type": "string", "maxLength": 4}]}},
     "required": ["value"], "additionalProperties": False},
    # nullable
    {"type": "object", "properties": {"note": {"type": ["string", "null"], "maxLength": 6}},
     "required": ["note"], "additionalProperties": False},
    # $defs and $ref
    {"type": "object", "$defs": {"pt": {"type": "object", "properties": {
        "lat": {"type": "number", "minimum": -90, "maximum": 90},
        "lon": {"type": "number", "minimum": -180, "maximum": 180}}, "required": ["lat", "lon"],
        "additionalProperties": False}},
     "properties": {"start": {"$ref": "#/$defs/pt"}, "end": {"$ref": "#/$defs/pt"}},
     "required": ["start", "end"], "additionalProperties": False},
    # a tuple (prefixItems)
    {"type": "object", "properties": {"pair": {"type": "array", "prefixItems": [
        {"type": "string", "maxLength": 3}, {"type": "integer", "minimum": 0, "maximum": 9}], "items": False,
        "minItems": 2}},
     "required": ["pair"], "additionalProperties": False},
    # string length bounds
    {"type": "object", "properties": {"word": {"type": "string", "minLength": 3, "maxLength": 6}},
     "required": ["word"], "additionalProperties": False},
    # deep nesting
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {
        "c": {"type": "object", "properties": {"d": {"type": "integer", "minimum": 0, "maximum": 3}},
              "required": ["d"], "additionalProperties": False}}, "required": ["c"], "additionalProperties": False}},
        "required": ["b"], "additionalProperties": False}}, "required": ["a"], "additionalProperties": False},
    # an array of Chinese enum strings, with a Chinese description
    {"type": "object", "properties": {"标签": {"type": "array", "description": "评价标签", "minItems": 1,
                                             "maxItems": 3, "items": {"enum": ["好", "坏", "一般"]}}},
     "required": ["标签"], "additionalProperties": False},
    # an enum of mixed types at the root of a property, and a date
    {"type": "object", "properties": {"answer": {"enum": [1, "two", None, True]},
                                      "day": {"type": "string", "format": "date"}},
     "required": ["answer", "day"], "additionalProperties": False},
]

PLAIN_PROMPTS = ["What is the capital of France?", "Write a poem about the sea.", "床前明月光，下一句是什么？"]


def _client(srv: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="local-no-key", max_retries=0, timeout=600)


def httpx_post(srv: ServerProcess, path: str, body: dict) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=600)


def _schema_format(schema: dict, name: str = "answer") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def tiny_server(tiny_ckpt, tmp_path_factory):
    srv = ServerProcess(tiny_ckpt, tmp_path_factory.mktemp("structured") / "s.db", "--max-batch", "8").wait_ready()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def smol_server(smollm2, tmp_path_factory):
    srv = ServerProcess(smollm2, tmp_path_factory.mktemp("structured-smol") / "s.db", "--max-batch", "4",
                        "--model-id", "smollm2-135m-instruct").wait_ready(timeout=600)
    yield srv
    srv.stop()


def _tiny_chat(client, schema: dict | None, seed: int, **kw):
    fmt = _schema_format(schema) if schema is not None else {"type": "json_object"}
    return client.chat.completions.create(
        model=TINY, messages=[{"role": "user", "content": "Answer in JSON."}], temperature=1.0, seed=seed,
        max_tokens=TINY_BUDGET, response_format=fmt, **kw)


@pytest.mark.parametrize("i", range(len(SCHEMAS)))
def test_json_schema_replies_validate(tiny_server, i):
    """Whatever the (random) model would write, the reply is JSON valid for the schema, and it ends at the
    end of the JSON with finish_reason "stop"."""
    schema = SCHEMAS[i]
    jsonschema.Draft202012Validator.check_schema(schema)
    r = _tiny_chat(_client(tiny_server), schema, seed=100 + i)
    choice = r.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), schema)


def test_json_object_reply_is_an_object(tiny_server):
    """`json_object`: any JSON object. The random model's keys and values are noise of any length, so a reply
    may run out of tokens (`length`); these seeds give an empty object and a long one."""
    r = _tiny_chat(_client(tiny_server), None, seed=8, n=2, top_p=1.0)
    objects = [json.loads(c.message.content) for c in r.choices if c.finish_reason == "stop"]
    assert objects and all(isinstance(o, dict) for o in objects)
    assert all(c.message.content.startswith("{") for c in r.choices)


def test_streamed_reply_is_the_same_json(tiny_server):
    """A constrained reply streamed in deltas assembles into the same JSON as the whole reply."""
    client, schema = _client(tiny_server), SCHEMAS[3]
    whole = _tiny_chat(client, schema, seed=3).choices[0].message.content
    chunks = list(_tiny_chat(client, schema, seed=3, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    jsonschema.validate(json.loads(streamed), schema)


def test_a_stop_string_still_ends_a_constrained_reply(tiny_server):
    """The grammar forces `{"version": 2, "kind": "report"}`; a stop string inside it ends the reply there."""
    client, schema = _client(tiny_server), SCHEMAS[11]
    full = _tiny_chat(client, schema, seed=1).choices[0].message.content
    assert json.loads(full) == {"version": 2, "kind": "report"}
    cut = _tiny_chat(client, schema, seed=1, stop=["report"]).choices[0]
    assert cut.finish_reason == "stop" and cut.message.content == full[:full.index("report")]
    streamed = "".join(c.choices[0].delta.content or "" for c in _tiny_chat(client, schema, seed=1, stop=["report"],
                                                                            stream=True) if c.choices)
    assert streamed == cut.message.content


def test_legacy_completions_take_response_format(tiny_server):
    r = httpx_post(tiny_server, "/v1/completions", {
        "model": TINY, "prompt": "JSON:", "max_tokens": TINY_BUDGET, "temperature": 1.0, "seed": 5, "n": 2,
        "response_format": _schema_format(SCHEMAS[0])})
    assert r.status_code == 200, r.text
    for choice in r.json()["choices"]:
        assert choice["finish_reason"] == "stop"
        jsonschema.validate(json.loads(choice["text"]), SCHEMAS[0])


def test_mixed_batch_leaves_unconstrained_requests_as_they_are_alone(tiny_ckpt, tmp_path):
    """Constrained and unconstrained requests decode in the same batches; each unconstrained one gives
    exactly its solo output, and each constrained one validates."""
    srv = ServerProcess(tiny_ckpt, tmp_path / "mixed.db", "--max-batch", "8").wait_ready()
    try:
        client = _client(srv)

        def plain(prompt: str, seed: int | None):
            kw = {"temperature": 0} if seed is None else {"temperature": 0.9, "seed": seed}
            return client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": prompt}],
                                                  max_tokens=120, extra_body={"ignore_eos": True},
                                                  **kw).choices[0].message.content
        jobs = [(p, None) for p in PLAIN_PROMPTS] + [(PLAIN_PROMPTS[0], 11)]
        solo = [plain(p, s) for p, s in jobs]
        constrained = [SCHEMAS[k] for k in (1, 3, 5, 14)]
        with cf.ThreadPoolExecutor(len(jobs) + len(constrained)) as pool:
            plain_f = [pool.submit(plain, p, s) for p, s in jobs]
            cons_f = [pool.submit(_tiny_chat, client, schema, 20 + k) for k, schema in enumerate(constrained)]
            together = [f.result() for f in plain_f]
            replies = [f.result().choices[0] for f in cons_f]
        assert together == solo
        for choice, schema in zip(replies, constrained):
            assert choice.finish_reason == "stop"
            jsonschema.validate(json.loads(choice.message.content), schema)
        assert srv.health()["scheduler"]["max_batch_stepped"] >= 2  # they really shared decode steps
    finally:
        srv.stop()


@pytest.mark.parametrize("fmt, problem", [
    (_schema_format({"type": "object", "properties": {"a": {"type": "integer", "minimum": 5, "maximum": 3}},
                     "required": ["a"]}), "unsatisfiable"),
    (_schema_format({"type": "string", "pattern": "(("}), "regex"),
    (_schema_format({"type": 5}), "type"),
    (_schema_format({"$ref": "#/$defs/missing"}), "missing"),
])
def test_a_schema_that_cannot_be_compiled_is_a_400_naming_response_format(tiny_server, fmt, problem):
    with pytest.raises(openai.BadRequestError) as e:
        _client(tiny_server).chat.completions.create(model=TINY, messages=[{"role": "user", "content": "hi"}],
                                                     max_tokens=5, response_format=fmt)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == "response_format", err
    assert "response_format" in err["message"] and problem in err["message"], err
    r = httpx_post(tiny_server, "/v1/completions", {"model": TINY, "prompt": "x", "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format", r.text


@pytest.mark.parametrize("fmt, param", [
    ({"type": "json_schema"}, "response_format.json_schema"),
    ({"type": "yaml"}, "response_format.type"),
    ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}}, "response_format.json_schema.name"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": "{}"}}, "response_format.json_schema.schema"),
])
def test_a_malformed_response_format_is_a_400_naming_the_field(tiny_server, fmt, param):
    r = httpx_post(tiny_server, "/v1/chat/completions", {
        "model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "response_format": fmt})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


# ---- the engine's side: the constraint as a logits processor, without the server ----------------------------

@pytest.fixture(scope="module")
def tiny_engine(tiny_ckpt):
    from alignchat.engine import Engine
    from alignchat.hub import load_model
    model, tok, _ = load_model(tiny_ckpt)
    return Engine(model, tok, max_batch=4, max_seq_len=256)


def _prompt(engine, question: str = "Answer in JSON.") -> list[int]:
    return engine.tok.render_chat([{"role": "user", "content": question}], add_generation_prompt=True).ids


def test_one_constraint_shared_by_a_batch_gives_each_request_its_own_parser(tiny_engine):
    """One SamplingParams (and so one constraint object) for a whole batch: every request still follows the
    grammar from its own state, and gives what it gives with a constraint of its own, alone."""
    from alignchat.engine import SamplingParams
    from alignchat.engine.grammar import json_constraint
    schema = SCHEMAS[1]
    shared = SamplingParams(max_tokens=TINY_BUDGET, temperature=0,
                            logits_processors=[json_constraint(tiny_engine.tok, schema)])
    prompts = [_prompt(tiny_engine, q) for q in PLAIN_PROMPTS]
    batch = tiny_engine.generate(prompts, shared)
    alone = [tiny_engine.generate([p], SamplingParams(max_tokens=TINY_BUDGET, temperature=0, logits_processors=[
        json_constraint(tiny_engine.tok, schema)]))[0] for p in prompts]
    assert [g.text for g in batch] == [g.text for g in alone]
    assert len({g.text for g in alone}) == len(prompts)  # the prompts lead to different replies
    for g in alone:
        jsonschema.validate(json.loads(g.text), schema)


def test_a_complete_reply_allows_only_end_of_turn_tokens(tiny_engine):
    """Past the end of the JSON (here forced on with ignore_eos) the only tokens left are end-of-turn ones."""
    from alignchat.engine import SamplingParams
    from alignchat.engine.grammar import json_constraint
    schema = SCHEMAS[4]
    g = tiny_engine.generate([_prompt(tiny_engine)], SamplingParams(
        max_tokens=40, temperature=1.0, seed=1, ignore_eos=True,
        logits_processors=[json_constraint(tiny_engine.tok, schema)]))[0]
    stops = set(tiny_engine.tok.stop_token_ids)
    first_stop = next(i for i, t in enumerate(g.token_ids) if t in stops)
    assert set(g.token_ids[first_stop:]) <= stops and len(g.token_ids) == 40
    jsonschema.validate(json.loads(tiny_engine.tok.decode(g.token_ids[:first_stop])), schema)


def test_a_lark_grammar_embeds_a_json_schema(tiny_engine):
    """The same machinery takes a Lark grammar, e.g. a call syntax around JSON arguments."""
    from alignchat.engine import SamplingParams
    from alignchat.engine.grammar import lark_constraint
    from alignchat.errors import UserError
    args = {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["x"], "additionalProperties": False}
    grammar = f'start: "<call>" args "</call>"\nargs: %json {json.dumps(args)}'
    g = tiny_engine.generate([_prompt(tiny_engine)], SamplingParams(
        max_tokens=60, temperature=1.0, seed=2, logits_processors=[lark_constraint(tiny_engine.tok, grammar)]))[0]
    assert g.finish_reason == "stop" and g.text.startswith("<call>") and g.text.endswith("</call>")
    jsonschema.validate(json.loads(g.text[len("<call>"):-len("</call>")]), args)
    with pytest.raises(UserError, match="unknown name"):
        lark_constraint(tiny_engine.tok, "start: nowhere")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_constrained_decoding_on_cuda(tiny_ckpt):
    """The masks move to the logits' device: constrained replies on CUDA (graphs and eager) validate."""
    from alignchat.engine import Engine, SamplingParams
    from alignchat.engine.grammar import json_constraint
    from alignchat.hub import load_model
    model, tok, _ = load_model(tiny_ckpt, device="cuda")
    for graphs in (True, False):
        eng = Engine(model, tok, max_batch=4, max_seq_len=256, cuda_graphs=graphs)
        prompt = tok.render_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True).ids
        for schema in SCHEMAS[:6]:
            outs = eng.generate([prompt] * 3, [SamplingParams(max_tokens=TINY_BUDGET, temperature=t, seed=s,
                                                              logits_processors=[json_constraint(tok, schema)])
                                               for s, t in enumerate((1.0, 0.7, 1.0))])
            for g in outs:
                assert g.finish_reason == "stop", g.text
                jsonschema.validate(json.loads(g.text), schema)


# ---- the default model ------------------------------------------------------------------------------------

class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population_millions: float


def test_parse_with_a_pydantic_model_on_the_default_model(smol_server):
    """`client.chat.completions.parse` sends the model's strict JSON Schema and returns a parsed `City`."""
    client = _client(smol_server)
    r = client.chat.completions.parse(
        model="smollm2-135m-instruct", temperature=0, max_tokens=60, response_format=City,
        messages=[{"role": "user", "content": "Paris is the capital of France and has about 2.1 million inhabitants. "
                                              "Give it as JSON with name, country and population in millions."}])
    city = r.choices[0].message.parsed
    assert isinstance(city, City) and r.choices[0].finish_reason == "stop"
    assert city.name == "Paris" and city.population_millions == pytest.approx(2.1)


SMOL_CASES = [
    ("Alice is 30 years old. Give her name and age as JSON.", SCHEMAS[0]),
    ("Which colour is the sky on a clear day? Answer as JSON.", SCHEMAS[4]),
    ("中国的首都是哪个城市？用JSON回答。", SCHEMAS[5]),
]


@pytest.mark.parametrize("prompt, schema", SMOL_CASES)
def test_default_model_json_schema_replies_validate(smol_server, prompt, schema):
    r = _client(smol_server).chat.completions.create(
        model="smollm2-135m-instruct", temperature=0, max_tokens=60, messages=[{"role": "user", "content": prompt}],
        response_format=_schema_format(schema))
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
