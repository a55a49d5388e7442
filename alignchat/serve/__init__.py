"""Serving: the OpenAI-compatible HTTP API, the continuous-batching scheduler, the database and the web chat UI.

`create_app` (in `app.py`) builds the FastAPI application; `alignchat serve` runs it on uvicorn.
"""
