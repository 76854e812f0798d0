"""gan-harness tests (a regular package: torch-fidelity installs a top-level ``tests``)."""
