"""Built-in GAN backbones."""

from harness import hookimpl


@hookimpl
def harness_backbones() -> dict[str, str]:
    return {"mlp": "harness_plugins.backbones.mlp:MLP"}
