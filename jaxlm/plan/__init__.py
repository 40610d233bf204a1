"""Planning before training: compute-optimal size (scaling laws), per-device memory, time and cost,
fitting a scaling law to your own runs. `python -m jaxlm.plan --help`; sweeps live in jaxlm.sweep."""


class PlanError(ValueError):
    """Input the planner cannot work with; the message says what is wrong and what to do."""
