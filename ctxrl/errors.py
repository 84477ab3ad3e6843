"""Exceptions raised by the host; each message names the thing that is wrong."""

from __future__ import annotations


class CtxrlError(Exception):
    """Base class of every error ctxrl raises on purpose."""


class ContextError(CtxrlError, ValueError):
    """An unknown context feature, a value of the wrong type or outside its bounds."""


class ConfigError(CtxrlError, ValueError):
    """A configuration file or override that does not validate."""


class UnknownNameError(CtxrlError, KeyError):
    """A name (env, algorithm, strategy, ...) that no loaded plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class DuplicateNameError(CtxrlError):
    """Two plugins register the same name for the same kind of thing."""


class PluginError(CtxrlError):
    """A plugin that cannot be loaded or breaks the host's contracts."""


class PluginUnavailable(CtxrlError):
    """Raised by a plugin's hook when an optional dependency is missing; the plugin is listed
    as ``unavailable`` with the message (say what to install), not as failed."""


class CheckpointError(CtxrlError):
    """A training checkpoint that is whole but cannot be restored (written by another version
    of the trainer, or for other agents): the caller may set it aside and train from the
    start."""


class MatrixError(CtxrlError, ValueError):
    """A transfer matrix file or operation with inconsistent shapes or contents."""


class Terminated(SystemExit):
    """A termination signal (SIGTERM) turned into an exit: it ends the command even where a
    plugin's own ``sys.exit`` is caught and reported as that plugin's failure."""


class JobFailed(RuntimeError):
    """What an executor reports for a job that raised, crashed or timed out: ``summary`` says
    what happened in one line (the job's own exception, the signal that killed its worker, the
    time limit), the message adds the details (the last lines of the job's log, the worker's
    traceback). A sweep stores the message and prints the summary
    (:func:`ctxrl.runs.error_summary`)."""

    def __init__(self, summary: str, details: str = "") -> None:
        super().__init__(f"{summary}\n{details}".rstrip())
        self.summary = summary
