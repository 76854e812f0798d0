"""Built-in plugins of gan-harness, one package per family, registered through the
``harness.plugins`` entry-point group exactly as third-party plugins are."""
