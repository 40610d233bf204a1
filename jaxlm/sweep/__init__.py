"""Hyper-parameter sweeps and ablations over jaxlm training runs: `python -m jaxlm.sweep --help`."""
