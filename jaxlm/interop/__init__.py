"""Hugging Face `transformers` interop: export, import and warm start (see `hf` and `keymap`)."""

from jaxlm.interop.hf import InteropError, check_params, export_hf, load_hf, warm_start_params

__all__ = ["InteropError", "check_params", "export_hf", "load_hf", "warm_start_params"]
