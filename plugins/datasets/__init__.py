"""Built-in datasets."""

from harness import hookimpl


@hookimpl
def harness_datasets() -> dict[str, str]:
    return {
        "ring": "harness_plugins.datasets.toy2d:Ring",
        "grid": "harness_plugins.datasets.toy2d:Grid",
        "gmgan_toy": "harness_plugins.datasets.toy2d:GMGANToy",
        "digits": "harness_plugins.datasets.images:Digits",
        "stacked_digits": "harness_plugins.datasets.images:StackedDigits",
        "mnist": "harness_plugins.datasets.files:MNIST",
        "stacked_mnist": "harness_plugins.datasets.files:StackedMNIST",
        "cifar10": "harness_plugins.datasets.files:CIFAR10",
        "image_folder": "harness_plugins.datasets.files:ImageFolder",
    }
