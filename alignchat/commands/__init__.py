"""Small CLI verbs of the core: generate, chat, import, export."""
