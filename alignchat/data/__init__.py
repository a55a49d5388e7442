"""The data stage: registry corpora, readers for the user's files, cleaning, shards and the instruction builder.

Submodules are imported on demand (`from alignchat.data import clean`), so importing the package is cheap.
"""
