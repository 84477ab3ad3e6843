"""A template ctxrl plugin (see plugin.py)."""
