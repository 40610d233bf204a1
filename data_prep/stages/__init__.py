"""data_prep's document stages: cleaning, quality filters, dedup, decontamination, mixing.

Build one from a config dict with `build_stage({"type": ..., **options})` (registry.py); run a
list of specs over file-sharded tasks with `runner.run_stages` on an executor from
`data_prep.executors`; report with `report.manifest_stages` / `report.write_report`.

Types (options and published defaults are the dataclass fields of each class):
    html_extract        clean.HtmlExtract          HTML -> main text (trafilatura | resiliparse)
    unicode_fix         clean.UnicodeFix           ftfy mojibake repair, NFC, control chars, whitespace
    emoji               clean.EmojiToText          emoji/symbols -> ":name:", removed or kept
    gopher_quality      gopher.GopherQuality       Gopher's document quality rules
    gopher_repetition   gopher.GopherRepetition    Gopher's repetition rules
    c4                  c4.C4Lines                 C4's line and page rules
    fineweb_quality     fineweb.FineWebQuality     FineWeb's extra rules
    language            langid.LanguageFilter      py3langid (model ships in the wheel)
    blocklist           blocklist.Blocklist        a user-supplied word list
    counterfactual      counterfactual.CounterfactualAugmentation  swap gendered words (CDA)
    toxicity_filter     toxicity.ToxicityFilter    jaxlm's toxicity classifier, per-group removal counts
    quality_classifier  quality.QualityClassifier  hashed n-gram logistic regression (global)
    exact_dedup         dedup.ExactDedup           hash of normalised text (global)
    minhash_dedup       dedup.MinHashDedup         MinHash LSH, 14 bands x 8 rows (global)
    decontaminate       decontam.Decontaminate     13-gram eval index; drop or GPT-3 cut (global)
    mix                 mixing.Mix                 per-source target shares (global)
Every spec may also set `name` (unique per pipeline); per-document stages may set `sources`
(a list of source names they apply to; others pass through untouched).
"""

from data_prep.stages.base import Drop, Filter, GlobalStage, Mapper, Stage, StageStats, counted
from data_prep.stages.registry import STAGES, StageConfigError, build_stage, build_stages

# Importing the modules registers their stage types.
from data_prep.stages import (blocklist, c4, clean, counterfactual, decontam, dedup, fineweb,  # noqa: E402,F401
                              gopher, langid, mixing, quality, toxicity)

__all__ = ["Drop", "Filter", "GlobalStage", "Mapper", "Stage", "StageStats", "counted",
           "STAGES", "StageConfigError", "build_stage", "build_stages"]
