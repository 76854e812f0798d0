"""Built-in datasets."""

from harness import hookimpl


@hookimpl
def harness_datasets() -> dict[str, str]:
    return {
        "ring": "harness_plugins.datasets.toy2d:Ring",
        "grid": "harness_plugins.datasets.toy2d:Grid",
    }
