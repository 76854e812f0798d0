"""Built-in augmentations of D's inputs (``--augment``)."""

from harness import hookimpl


@hookimpl
def harness_augmentations() -> dict[str, str]:
    return {
        "none": "harness_plugins.augmentations.diffaug:Identity",
        "diffaug": "harness_plugins.augmentations.diffaug:DiffAugment",
    }
