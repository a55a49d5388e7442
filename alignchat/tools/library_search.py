"""The `library_search` tool: hybrid retrieval (`alignchat.library.retrieve`) over the current user's own
library, returning passages with the ids an answer cites.

Notable choices:
- The tool never chooses whose library it reads: the caller puts a search function scoped to one owner in
  `ToolContext.library_search` (`searcher(library, owner)` builds one); without it the tool says there is
  no library here.
- The result is JSON text, `{"passages": [{"passage_id", "title", "page", "text"}, ...]}`, each text cut
  to `MAX_PASSAGE_CHARS`, so the model can quote and cite `[passage_id]`; no passages is an empty list,
  not an error.
"""
from __future__ import annotations

import json

from .errors import ToolError

NAME = "library_search"
DESCRIPTION = ("Search the user's own library of documents. Returns the best passages with their passage_id; "
               "cite a passage as [passage_id].")
PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "what to look for", "maxLength": 500},
                   "k": {"type": "integer", "minimum": 1, "maximum": 10, "description": "how many passages"}},
    "required": ["query"],
    "additionalProperties": False,
}
MAX_QUERY_CHARS = 500
MAX_K = 10
MAX_PASSAGE_CHARS = 800


def searcher(library, owner: str):
    """A `ToolContext.library_search` over `owner`'s passages of a `library.store.Library`."""
    def search(query: str, k: int) -> list[dict]:
        return [h.to_dict() for h in library.retriever(owner).search(query, k=k)]
    return search


def run(arguments: dict, context) -> str:
    query = arguments.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ToolError('library_search needs {"query": "<what to look for>"}')
    if len(query) > MAX_QUERY_CHARS:
        raise ToolError(f"the query is longer than {MAX_QUERY_CHARS} characters")
    k = arguments.get("k", 5)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise ToolError(f"k must be an integer from 1 to {MAX_K}")
    if context is None or context.library_search is None:
        raise ToolError("there is no library to search here")
    hits = context.library_search(query, k)
    passages = [{"passage_id": h["passage_id"], "title": h.get("title"), "page": h.get("page"),
                 "text": (h.get("text") or "")[:MAX_PASSAGE_CHARS]} for h in hits]
    return json.dumps({"passages": passages}, ensure_ascii=False)
