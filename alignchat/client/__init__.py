"""One model-client layer: a local checkpoint on our engine or any OpenAI-compatible endpoint, behind one
interface (chat, generate, log-likelihood, token count).

    from alignchat.client import make_client, GREEDY
    client = make_client(model="smollm2-135m-instruct")               # or endpoint="http://host:8000/v1"
    client.chat([{"role": "user", "content": "Hi"}], GREEDY.but(max_tokens=32)).text
    client.loglikelihood([("The capital of France is", " Paris")])   # [Score(logprob, greedy, tokens)]
    client.count_tokens([{"role": "user", "content": "Hi"}])

Modules: `base` (the interface, `Score`, `Completion`, `Usage`), `sampling` (`Sampling` and the one set
of defaults), `local` (`LocalClient`), `endpoint` (`EndpointClient`), `cli` (the one flag set:
`--model` | `--endpoint URL --endpoint-model NAME --api-key-env VAR`, `--device`, `--dtype`).

Notable choices:
- `make_client` lives here rather than in `base`, so that `base` never imports the clients that build on
  it; the clients are imported only when one is made (torch for a local one, httpx for an endpoint).
"""
from __future__ import annotations

from .base import Completion, LoglikelihoodUnsupported, ModelClient, Score, Usage
from .sampling import GREEDY, SAMPLING_DEFAULTS, Sampling

__all__ = ["Completion", "GREEDY", "LoglikelihoodUnsupported", "ModelClient", "SAMPLING_DEFAULTS", "Sampling",
           "Score", "Usage", "make_client"]


def make_client(model: str | None = None, endpoint: str | None = None, endpoint_model: str | None = None,
                api_key_env: str | None = "OPENAI_API_KEY", device: str | None = "auto", dtype: str | None = None,
                **local_options) -> ModelClient:
    """A `LocalClient` for `model`, or an `EndpointClient` for `endpoint` (exactly one of the two).

    `local_options` go to `LocalClient` (max_batch, max_seq_len, threads, score_batch, loaded)."""
    from ..errors import UserError
    if model and endpoint:
        raise UserError("give either --model (a local model) or --endpoint URL, not both")
    if endpoint:
        from .endpoint import EndpointClient
        return EndpointClient(endpoint, endpoint_model, api_key_env=api_key_env)
    if not model:
        raise UserError("give --model (a registry name, checkpoint directory or .gguf) or --endpoint URL")
    from .local import LocalClient
    return LocalClient(model, device=device, dtype=dtype, **local_options)
