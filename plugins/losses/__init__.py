"""Built-in adversarial losses."""

from harness import hookimpl


@hookimpl
def harness_losses() -> dict[str, str]:
    return {
        "bce": "harness_plugins.losses.adversarial:NonSaturating",
        "hinge": "harness_plugins.losses.adversarial:Hinge",
    }
