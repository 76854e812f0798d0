"""Built-in executors: where ``harness suite`` runs its jobs (``--executor``)."""

from harness import hookimpl


@hookimpl
def harness_executors() -> dict[str, str]:
    return {
        "local": "harness_plugins.executors.processes:Local",
        "pool": "harness_plugins.executors.processes:Pool",
        "ray": "harness_plugins.executors.ray_tasks:Ray",
        "submitit": "harness_plugins.executors.slurm:Submitit",
    }
