"""alignchat: a self-hostable implementation of the system behind ChatGPT."""
__version__ = "0.1.0"
