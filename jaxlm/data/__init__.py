"""Reading side of the data path: prepared ArrayRecord datasets -> packed batches (Grain).

Modules: `format` (the on-disk contract), `chat` (chat template: conversations -> ids + loss mask), `shards` (open and check a dataset), `mixing` (weighted
interleave of datasets), `packing` (rows from documents), `loader` (`build_loader`, the public
entry point), `global_batch` (host batches -> global jax.Arrays; the only one that needs JAX).
Nothing is imported here so that `data_prep` and Grain worker processes stay light.
"""
