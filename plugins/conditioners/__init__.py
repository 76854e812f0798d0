"""Built-in conditioning sources."""

from harness import hookimpl


@hookimpl
def harness_conditioners() -> dict[str, str]:
    return {
        "none": "harness_plugins.conditioners.simple:Unconditional",
        "random": "harness_plugins.conditioners.simple:RandomLabels",
        "ground_truth": "harness_plugins.conditioners.simple:GroundTruth",
        "kmeans_d": "harness_plugins.conditioners.kmeans:SelfConditioned",
        "online_kmeans": "harness_plugins.conditioners.kmeans:OnlineKMeans",
        "gmm": "harness_plugins.conditioners.mixture:MixtureComponent",
        "clustering_net": "harness_plugins.conditioners.clustering_net:ClusteringNet",
    }
