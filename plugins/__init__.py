"""ctxrl's built-in algorithm, strategy, executor and transfer plugins.

Each module is a plugin registered through the ``ctxrl`` entry-point group, exactly like a
third-party package; the host never imports them directly.
"""
