"""Plugin discovery and loading.

Plugins come from the ``ctxrl`` entry-point group (built-ins included) and, in tests or
scripts, from :meth:`Host.add_plugin`. Loading is isolated: a plugin whose import or
registration raises is recorded as failed (distribution, entry point, exception), everything it
registered is rolled back, and every other plugin still loads.

Controls (environment variables, mirrored by CLI flags):

``CTXRL_DISABLE_PLUGIN_AUTOLOAD=1``
    load no entry point unless it is named in ``CTXRL_PLUGINS``.
``CTXRL_PLUGINS=a,b``
    allow-list: only these entry points (by entry-point or distribution name) load.
``CTXRL_BLOCK_PLUGINS=a,b`` / ``ctxrl --block a``
    never load these.
``CTXRL_TRACE_PLUGINS=1``
    print every hook call to stderr (registration, commands and lifecycle hooks), with the
    plugin called and its result or exception.

The host calls a hook one plugin at a time, through pluggy (so tracing and pluggy's argument
handling apply): that is how one plugin's failure is told apart from the others'.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, cast

import pluggy

from ctxrl import hookspecs
from ctxrl.errors import CtxrlError, PluginUnavailable, Terminated
from ctxrl.registry import Kind, Registry

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    import click

ENTRY_POINT_GROUP = "ctxrl"
DISABLE_AUTOLOAD_ENV = "CTXRL_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "CTXRL_PLUGINS"
BLOCK_ENV = "CTXRL_BLOCK_PLUGINS"
TRACE_ENV = "CTXRL_TRACE_PLUGINS"

Status = Literal["loaded", "failed", "unavailable", "blocked", "not-allowed"]


@dataclass
class PluginInfo:
    """What ``ctxrl plugins`` reports about one plugin."""

    name: str
    distribution: str | None = None
    version: str | None = None
    entry_point: str | None = None
    status: Status = "loaded"
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.entry_point,
            "status": self.status,
            "hooks": self.hooks,
            "provides": self.provides,
            "error": self.error,
        }


def normalized_name(name: str) -> str:
    """A plugin or distribution name compared as pip compares them (PEP 503): case and runs
    of ``-``, ``_``, ``.`` do not matter."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_names(value: str | None) -> set[str]:
    return {part.strip() for part in (value or "").split(",") if part.strip()}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


class Host:
    """The plugin manager and the registry it fills.

    Args:
        autoload: load entry points; ``None`` reads ``CTXRL_DISABLE_PLUGIN_AUTOLOAD``.
        allow: names allowed to load; ``None`` reads ``CTXRL_PLUGINS`` (unset = all).
        block: names never loaded, added to ``CTXRL_BLOCK_PLUGINS``.
    """

    def __init__(
        self,
        *,
        autoload: bool | None = None,
        allow: Iterable[str] | None = None,
        block: Iterable[str] = (),
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        if _env_flag(TRACE_ENV):
            self._trace_hooks()
        self.registry = Registry()
        self.plugins: dict[str, PluginInfo] = {}
        self.autoload = not _env_flag(DISABLE_AUTOLOAD_ENV) if autoload is None else autoload
        env_allow = os.environ.get(ALLOW_ENV)
        allowed = (
            set(allow) if allow is not None else (_split_names(env_allow) if env_allow else None)
        )
        self.allow: set[str] | None = (
            None if allowed is None else {normalized_name(n) for n in allowed}
        )
        blocked = _split_names(os.environ.get(BLOCK_ENV)) | set(block)
        self.block = {normalized_name(n) for n in blocked}
        self._spelled = {normalized_name(n): n for n in [*(allowed or ()), *blocked]}
        """each blocked or allowed name as it was given, by its normalised form"""
        self._registered = False

    def _trace_hooks(self) -> None:
        """Print every hook call to stderr with pluggy's hook tracer, naming the plugins called
        (the host calls one plugin at a time, so the hook's name alone says little) and what
        each call returned or raised."""
        self.pm.trace.root.setwriter(sys.stderr.write)
        hooktrace = self.pm.trace.root.get("hook")

        def before(
            hook_name: str, methods: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]
        ) -> None:
            hooktrace.root.indent += 1
            plugins = ", ".join(m.plugin_name for m in methods) or "no plugin"
            hooktrace(hook_name, f"({plugins})", dict(kwargs))

        def after(
            outcome: pluggy.Result[object],
            hook_name: str,
            methods: Sequence[pluggy.HookImpl],
            kwargs: Mapping[str, object],
        ) -> None:
            if outcome.exception is None:
                hooktrace("finish", hook_name, "-->", outcome.get_result())
            else:
                hooktrace("raised", hook_name, "-->", _describe(outcome.exception))
            hooktrace.root.indent -= 1

        self.pm.add_hookcall_monitoring(before, after)

    def _call_plugin(self, hook_name: str, plugin_name: str, **kwargs: Any) -> None:
        """Call ``hook_name`` on plugin ``plugin_name`` alone, through pluggy (traced like any
        hook call; each implementation gets the arguments it names). Its exception propagates:
        the caller decides what a failure means."""
        plugin = self.pm.get_plugin(plugin_name)
        others = [p for p in self.pm.get_plugins() if p is not None and p is not plugin]
        self.pm.subset_hook_caller(hook_name, others)(**kwargs)

    def _implementers(self, hook_name: str) -> list[str]:
        """Names of the loaded plugins that implement ``hook_name``, in registration order."""
        names = []
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            info = self.plugins.get(impl.plugin_name)
            # once per plugin: one with two implementations of the hook (pluggy's specname)
            # is called once, and both run
            if (info is None or info.status == "loaded") and impl.plugin_name not in names:
                names.append(impl.plugin_name)
        return names

    # --------------------------------------------------------------------- loading
    def discover(self) -> None:
        """Import every entry point of the ``ctxrl`` group that the controls let through."""
        entry_points = sorted(
            metadata.entry_points(group=ENTRY_POINT_GROUP),
            key=lambda ep: (ep.dist is None or ep.dist.name != "ctxrl", ep.name),
        )
        for ep in entry_points:
            dist_name = ep.dist.name if ep.dist is not None else None
            info = PluginInfo(
                name=ep.name,
                distribution=dist_name,
                version=ep.dist.version if ep.dist is not None else None,
                entry_point=ep.value,
            )
            aliases = {normalized_name(n) for n in (ep.name, dist_name) if n}
            if aliases & self.block:  # before the duplicate check: a blocked plugin is no clash
                info.status = "blocked"
                key = ep.name if ep.name not in self.plugins else f"{ep.name} ({dist_name})"
                self.plugins[key] = info
                continue
            if info.name in self.plugins:
                info.status, info.error = (
                    "failed",
                    (
                        f"entry point name {ep.name!r} is also used by distribution "
                        f"{self.plugins[ep.name].distribution!r}"
                    ),
                )
                self.plugins[f"{ep.name} ({dist_name})"] = info
                continue
            self.plugins[ep.name] = info
            allowed = self.allow is None or bool(aliases & self.allow)
            if (not self.autoload and not (self.allow and aliases & self.allow)) or not allowed:
                info.status = "not-allowed"
                continue
            try:
                self._register(ep.load(), ep.name)
            except PluginUnavailable as exc:  # an optional dependency missing at import
                info.status, info.error = "unavailable", str(exc)
                self.registry.unavailable.append((ep.name, info.error))
            except Terminated:
                raise
            except (Exception, SystemExit) as exc:  # a broken plugin must not break the host
                info.status, info.error = "failed", _describe(exc)
                self.registry.failed.append((ep.name, info.error))

    def add_plugin(self, plugin: object, name: str, *, version: str | None = None) -> PluginInfo:
        """Register a plugin object directly (tests, scripts, notebooks)."""
        info = PluginInfo(name=name, version=version, entry_point=None)
        if name in self.plugins:  # the plugin loaded under that name stays as it is
            info.status, info.error = "failed", f"the plugin name {name!r} is already used"
            self.plugins[f"{name} (added)"] = info
            return info
        self.plugins[name] = info
        if normalized_name(name) in self.block:
            info.status = "blocked"
            return info
        try:
            self._register(plugin, name)
        except Terminated:
            raise
        except (Exception, SystemExit) as exc:
            info.status, info.error = "failed", _describe(exc)
            self.registry.failed.append((name, info.error))
        if self._registered and info.status == "loaded":
            self._run_registration(only=name)
            self._describe_loaded(name)
        return info

    def _register(self, plugin: object, name: str) -> None:
        """Register ``plugin`` with pluggy under ``name``, refusing an object pluggy cannot
        keep apart from the others (unhashable: it would break every other plugin's calls)
        and hook implementations whose names no hook specification has (a misspelling would
        load and silently provide nothing)."""
        try:
            hash(plugin)
        except TypeError:
            raise CtxrlError(
                f"plugin {name!r} is an unhashable {type(plugin).__name__} object; register a "
                "module or an instance of a plain class (a dataclass needs eq=False)"
            ) from None
        self.pm.register(plugin, name=name)
        callers = self.pm.get_hookcallers(plugin) or []
        unknown = [caller.name for caller in callers if not caller.has_spec()]
        implemented = {caller.name for caller in callers}
        unmarked = sorted(  # a hook's name without @hookimpl: pluggy ignores it, silently
            attr
            for attr in dir(plugin)
            if attr.startswith("ctxrl_")
            and attr not in implemented
            and callable(getattr(plugin, attr, None))
            and getattr(getattr(self.pm.hook, attr, None), "has_spec", lambda: False)()
        )
        if isinstance(plugin, type) and any(  # its methods would be called without their self
            not isinstance(inspect.getattr_static(plugin, attr), staticmethod | classmethod)
            for attr in implemented
        ):
            self.pm.unregister(plugin, name=name)
            raise CtxrlError(
                f"plugin {name!r} is the class {plugin.__name__}, not an instance of it; name "
                f"a module or an instance (an object `{plugin.__name__}()`) as the plugin"
            )
        if unmarked:
            self.pm.unregister(plugin, name=name)
            raise CtxrlError(
                f"{', '.join(unmarked)} not marked as hook implementation(s): decorate "
                "with @ctxrl.hookimpl, or pluggy never calls them"
            )
        if unknown:
            self.pm.unregister(plugin, name=name)
            hooks = vars(self.pm.hook).items()
            known = ", ".join(
                sorted(n for n, c in hooks if n.startswith("ctxrl_") and c.has_spec())
            )
            raise CtxrlError(f"unknown hook(s) {sorted(unknown)}; the hooks are {known}")

    def register_all(self) -> None:
        """Call every registration hook, one plugin at a time, isolating failures; once
        (plugins added later register on :meth:`add_plugin`)."""
        if self._registered:
            return
        self._run_registration(only=None)
        self._registered = True
        for name in self.plugins:
            self._describe_loaded(name)

    def _describe_loaded(self, name: str) -> None:
        """Record a loaded plugin's hooks and what it registered in its :class:`PluginInfo`."""
        info, plugin = self.plugins[name], self.pm.get_plugin(name)
        if info.status == "loaded" and plugin is not None:
            info.hooks = sorted(caller.name for caller in (self.pm.get_hookcallers(plugin) or []))
            info.provides = self.registry.provided_by(name)

    def _run_registration(self, only: str | None) -> None:
        """Each plugin's registration hooks, one plugin after another (in the order they were
        loaded): a plugin that fails in any of its hooks is rolled back before the next one
        registers, so a name it held (and then gave up) does not fail another plugin that
        registers it too."""
        implementers = {
            hook_name: self._implementers(hook_name) for hook_name in hookspecs.REGISTRATION_HOOKS
        }
        order = [n for n in self.plugins if any(n in names for names in implementers.values())]
        order += [n for names in implementers.values() for n in names if n not in order]
        for name in dict.fromkeys(order):
            if only is not None and name != only:
                continue
            for hook_name, kind in hookspecs.REGISTRATION_HOOKS.items():
                if name not in implementers[hook_name] or self.pm.get_plugin(name) is None:
                    continue
                register = self._make_register(cast(Kind, kind), name)
                try:
                    self._call_plugin(hook_name, name, register=register)
                except PluginUnavailable as exc:
                    self._fail(name, str(exc), status="unavailable")
                    self.registry.unavailable.append((name, str(exc)))
                    break
                except Terminated:
                    raise
                except (Exception, SystemExit) as exc:  # sys.exit("pip install foo") too
                    self._fail(name, f"{hook_name}: {_describe(exc)}")
                    break

    def register_commands(self, cli: click.Group) -> None:
        """Let every plugin add sub-commands to ``cli`` (``ctxrl_register_commands``), one
        plugin at a time: a plugin that raises, or replaces a command that was there, is
        failed like one whose registration raises (what it registered and every command it
        added, in sub-groups too, are removed); the others are kept. Commands an earlier host's
        plugins added to the same ``cli`` (one process invoking it twice) are removed first, so
        a plugin blocked now shows no command."""
        for group, commands in _command_tree(cli).items():
            for command_name, command in commands.items():
                if getattr(command, _COMMAND_OWNER, None) is not None:
                    del group.commands[command_name]
        for name in self._implementers("ctxrl_register_commands"):
            if self.pm.get_plugin(name) is None:
                continue
            before = _command_tree(cli)
            try:
                self._call_plugin("ctxrl_register_commands", name, cli=cli)
                replaced = [
                    f"{group.name} {command}"
                    for group, commands in before.items()
                    for command, was in commands.items()
                    if group.commands.get(command) is not was
                    and getattr(was, _COMMAND_OWNER, None) != name  # not its own, added before
                ]
                if replaced:
                    raise CtxrlError(f"it replaces the command(s) {replaced}")
                for group in _command_tree(cli):
                    for command in group.commands.values():
                        if command not in before.get(group, {}).values():
                            setattr(command, _COMMAND_OWNER, name)
            except Terminated:
                raise
            except (Exception, SystemExit) as exc:
                for group, commands in before.items():
                    group.commands.clear()
                    group.commands.update(commands)
                if isinstance(exc, PluginUnavailable):
                    self._fail(name, str(exc), status="unavailable")
                    self.registry.unavailable.append((name, str(exc)))
                else:
                    self._fail(name, f"ctxrl_register_commands: {_describe(exc)}")

    def _make_register(self, kind: Kind, provider: str) -> Callable[[Any], None]:
        def register(spec: Any) -> None:
            self.registry.add(kind, spec, provider)

        return register

    def _fail(self, name: str, error: str, status: Status = "failed") -> None:
        self.registry.remove_provider(name)
        if status == "failed":
            self.registry.failed.append((name, error))
        info = self.plugins.setdefault(name, PluginInfo(name=name))
        info.status, info.error = status, error
        info.hooks, info.provides = [], {}
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)

    # ------------------------------------------------------------------- lifecycle
    def notify(self, hook_name: str, **kwargs: Any) -> list[str]:
        """Call a lifecycle hook on every plugin; a raising plugin is reported, not fatal.

        Returns the error messages (also printed to stderr)."""
        if hook_name not in hookspecs.LIFECYCLE_HOOKS:
            raise CtxrlError(f"{hook_name!r} is not a lifecycle hook")
        errors = []
        for name in self._implementers(hook_name):
            try:
                self._call_plugin(hook_name, name, **kwargs)
            except Terminated:  # the command was told to stop, not the plugin
                raise
            except (Exception, SystemExit) as exc:
                message = f"plugin {name!r} failed in {hook_name}: {_describe(exc)}"
                print(f"warning: {message}", file=sys.stderr)
                errors.append(message)
        return errors

    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.status == "failed"]

    def unmatched_controls(self) -> list[str]:
        """What the block and allow lists name that no plugin here is called (by entry-point
        or distribution name): a typo there blocks or allows nothing, so it is said."""
        known = {
            normalized_name(n)
            for info in self.plugins.values()
            for n in (info.name, info.distribution)
            if n
        }
        said = []
        for names, where in ((self.block, f"--block / {BLOCK_ENV}"), (self.allow, ALLOW_ENV)):
            unknown = sorted(self._spelled[n] for n in (names or set()) - known)
            if unknown:
                said.append(
                    f"{where} names {', '.join(map(repr, unknown))}, which no plugin here is "
                    f"called; the plugins: {', '.join(sorted(self.plugins))}"
                )
        return said


_COMMAND_OWNER = "ctxrl_plugin"
"""Attribute naming the plugin that added a command (a plugin may add its own again: the CLI
registers commands on every invocation of the same process's ``cli``)."""


def _command_tree(group: click.Group) -> dict[click.Group, dict[str, click.Command]]:
    """Every group under ``group`` (itself included) with a copy of its commands."""
    import click

    tree = {group: dict(group.commands)}
    for command in group.commands.values():
        if isinstance(command, click.Group):
            tree.update(_command_tree(command))
    return tree


_HOST: Host | None = None


def load_host(
    *,
    autoload: bool | None = None,
    allow: Iterable[str] | None = None,
    block: Iterable[str] = (),
    extra: Iterable[tuple[str, object]] = (),
) -> Host:
    """A fully loaded :class:`Host` (entry points, then ``extra`` plugins, then registration)."""
    host = Host(autoload=autoload, allow=allow, block=block)
    host.discover()
    for name, plugin in extra:
        host.add_plugin(plugin, name)
    host.register_all()
    return host


def get_host() -> Host:
    """The process-wide host, loaded on first use with the environment's controls."""
    global _HOST
    if _HOST is None:
        _HOST = load_host()
    return _HOST


def set_host(host: Host | None) -> None:
    """Replace the process-wide host (the CLI does this to apply ``--block``)."""
    global _HOST
    _HOST = host


@contextlib.contextmanager
def using_host(host: Host) -> Iterator[Host]:
    """``host`` as the process-wide host for the ``with`` block (what code that looks plugins
    up by name in this process finds), then the one before it again."""
    previous = _HOST
    set_host(host)
    try:
        yield host
    finally:
        set_host(previous)
