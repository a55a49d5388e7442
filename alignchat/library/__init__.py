"""The literature assistant: the user's own library, answered with verified citations (evidence chains).

Modules: `ingest` (PDF, BibTeX, RIS, Markdown, text), `structure` (reference lists, captions, front matter),
`text` (Chinese-aware tokens, sentences, passages), `store` (SQLite + numpy index, the citation graph),
`retrieve` (BM25 + MiniLM fused by reciprocal rank), `verify` (the citation verifier), `answer` (ask with
evidence), `tasks` (knowledge units, the synthesising review), `boolean` (Boolean search strings),
`backends` (our engine or an OpenAI-compatible server), `cli` (`alignchat library`) and `api` (the FastAPI
router the server mounts).
"""
from .store import DEFAULT_USER, Document, Library, Passage

__all__ = ["Library", "Document", "Passage", "DEFAULT_USER"]
