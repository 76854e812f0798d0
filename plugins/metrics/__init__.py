"""Built-in metrics."""

from harness import hookimpl


@hookimpl
def harness_metrics() -> dict[str, str]:
    return {
        "modes_2d": "harness_plugins.metrics.modes:Modes2D",
        "cluster_agreement": "harness_plugins.metrics.clusters:ClusterAgreement",
        "fid_digits": "harness_plugins.metrics.fidelity:DigitsFidelity",
        "fid_inception": "harness_plugins.metrics.fidelity:InceptionFidelity",
        "intra_fid_digits": "harness_plugins.metrics.fidelity:DigitsIntraFidelity",
        "intra_fid_inception": "harness_plugins.metrics.fidelity:InceptionIntraFidelity",
        "stacked_modes": "harness_plugins.metrics.stacked:StackedModes",
        "lpips_recon": "harness_plugins.metrics.reconstruction:LPIPSReconstruction",
    }
