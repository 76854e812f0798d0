"""Built-in GAN backbones."""

from harness import hookimpl


@hookimpl
def harness_backbones() -> dict[str, str]:
    return {
        "mlp": "harness_plugins.backbones.mlp:MLP",
        "dcgan": "harness_plugins.backbones.dcgan:DCGAN",
        "resnet": "harness_plugins.backbones.resnet:ResNet",
        "biggan": "harness_plugins.backbones.biggan:BigGAN",
    }
