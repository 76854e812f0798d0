"""gan-harness: compose latent priors, conditioning sources and GAN backbones, measure them."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("harness")
"""Decorator for plugin hook implementations: ``from harness import hookimpl``."""

__all__ = ["__version__", "hookimpl"]
