"""data_prep's document stages: cleaning, quality filters, dedup, decontamination, mixing.

Build one from a config dict with `build_stage({"type": ..., **options})`; see registry.py.
"""

from data_prep.stages.base import Drop, Filter, GlobalStage, Mapper, Stage, StageStats, counted
from data_prep.stages.registry import STAGES, StageConfigError, build_stage, build_stages

# Importing the modules registers their stage types.
from data_prep.stages import (blocklist, c4, clean, decontam, dedup, fineweb, gopher,  # noqa: E402,F401
                              langid, mixing, quality)

__all__ = ["Drop", "Filter", "GlobalStage", "Mapper", "Stage", "StageStats", "counted",
           "STAGES", "StageConfigError", "build_stage", "build_stages"]
