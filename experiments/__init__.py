"""Research code, not API: probes for developing the detector. They may change or break without notice; see
experiments/README.md. The product's own tools are in :mod:`benchmarks`."""
