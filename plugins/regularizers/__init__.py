"""Built-in regularisers: loss terms added to the training step (``--reg``)."""

from harness import hookimpl


@hookimpl
def harness_regularizers() -> dict[str, str]:
    return {
        "none": "harness_plugins.regularizers.penalties:NoRegularizer",
        "r1": "harness_plugins.regularizers.penalties:R1",
    }
