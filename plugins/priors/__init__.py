"""Built-in latent priors."""

from harness import hookimpl


@hookimpl
def harness_priors() -> dict[str, str]:
    return {
        "gaussian": "harness_plugins.priors.simple:Gaussian",
        "uniform": "harness_plugins.priors.simple:Uniform",
        "gmm": "harness_plugins.priors.gmm:GaussianMixture",
    }
