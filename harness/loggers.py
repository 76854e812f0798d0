"""Run loggers: the names ``--log`` accepts (``harness_loggers``), checked before a run starts.

A logger is registered like any component, ``{name: Logger subclass}``, by a plugin whose
lifecycle hooks (``harness_run_started``, ``harness_step_end``, ...) do the logging for the
runs whose ``run.config.log`` names it; built-in ``tensorboard`` and ``wandb`` work this way.
The class says what the logger needs, so that a run asking for it is refused in one line
before anything is written when that is missing.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.manager import PluginManager


class NoOptions(BaseModel):
    """Loggers take no options: ``harness plugins --verbose`` lists none."""

    model_config = ConfigDict(extra="forbid")


class Logger:
    """Base of the classes ``harness_loggers`` registers; its docstring is the logger's help
    in ``harness plugins``.

    Loggers take no options of their own: they log what the run's settings say (``--log-every``
    and ``--sample-every``), and their libraries read their own environment variables.
    """

    Options: ClassVar[type[BaseModel]] = NoOptions
    requires: ClassVar[tuple[str, ...]] = ()
    """Top-level modules the logger imports once a run enables it (e.g. ``("wandb",)``)."""
    extra: ClassVar[str | None] = None
    """The pip extra of gan-harness that installs them (``wandb`` for ``gan-harness[wandb]``);
    None: the error names the modules to install."""

    @classmethod
    def check(cls, name: str) -> None:
        """Raise ``ConfigError`` (one line naming the extra to install) when a module of
        ``requires`` cannot be imported. Finds the modules without importing them, so that
        checking stays fast."""
        missing = [module for module in cls.requires if importlib.util.find_spec(module) is None]
        if missing:
            install = (f"pip install 'gan-harness[{cls.extra}]'" if cls.extra
                       else f"pip install {' '.join(missing)}")
            raise ConfigError(f"--log {name} needs {', '.join(missing)}, which is not "
                              f"installed: {install}")


def check_loggers(config: RunConfig, pm: PluginManager) -> None:
    """Every name of ``config.log`` is a registered logger whose packages are installed;
    ``PluginError`` (an unknown name, with the valid ones) or ``ConfigError`` otherwise."""
    for name in config.log:
        pm.get("loggers", name).load().check(name)
