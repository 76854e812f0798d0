"""Errors the command line reports as one line, without a traceback."""


def one_line(text: object) -> str:
    """``text`` on one line: its lines joined with "; ", other unprintable characters escaped
    (``\\r``, ``\\x85``), so that a message quoting any input or exception stays one line."""
    joined = "; ".join(line.strip() for line in str(text).split("\n") if line.strip())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in joined)


def describe(exc: BaseException) -> str:
    """An exception in one line: its type and message."""
    return one_line(f"{type(exc).__name__}: {exc}")


class HarnessError(Exception):
    """A user-facing error: bad input, a missing plugin, an impossible composition."""


class RunFailed(HarnessError):
    """A run started but could not finish (e.g. its losses diverged); the CLI exits 1."""


class Diverged(RunFailed):
    """Training produced non-finite losses; the run stops at that step with status failed."""


class PluginError(HarnessError):
    """A plugin could not be loaded or registered."""


class ConfigError(HarnessError):
    """A run configuration or a component option is invalid."""


class MetricUnavailable(ConfigError):
    """A metric cannot run here (e.g. pretrained weights are missing); names the fix."""


class MetricError(HarnessError):
    """A metric cannot be computed for this run (e.g. its samples are non-finite); says why.

    The harness then stores no value for that metric and records the reason in ``run.json``
    (``metric_errors``); it never stores NaN or infinity.
    """


class LifecycleHookError(RunFailed):
    """A plugin's lifecycle hook raised, so the run failed; the CLI exits 1.

    Names the plugin, its package and the hook; the hook's exception is the ``__cause__``.
    """


class MetricCrashed(RunFailed):
    """A metric's ``compute`` raised something other than ``MetricError`` (a bug in the
    metric, or its environment): names the metric; its exception is the ``__cause__``."""
