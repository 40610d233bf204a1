"""Does a config's batch and pipeline fit a mesh? The one place that checks, before any compile."""

from __future__ import annotations

from jaxlm.config import Config, ConfigError
from jaxlm.parallel import pipeline


def check_fits(config: Config, sizes: dict[str, int], process_count: int = 1) -> None:
    """ConfigError, naming the keys to change, when this model and batch cannot run on a mesh of
    `sizes` ({axis: size}) fed by `process_count` processes."""
    micro = config.train.micro_batch
    shards = sizes.get("data", 1) * sizes.get("fsdp", 1)
    if micro % shards:
        raise ConfigError(f"train.micro_batch ({micro}) must be divisible by the mesh's batch axes "
                          f"data*fsdp = {shards} (mesh {shown(sizes)}); change the batch or the mesh")
    if micro % process_count:
        raise ConfigError(f"train.micro_batch ({micro}) must be divisible by the process count "
                          f"({process_count})")
    stages = sizes.get(pipeline.AXIS, 1)
    if stages > 1:
        pipeline.check_config(config, stages)


def shown(sizes: dict[str, int]) -> str:
    return ",".join(f"{a}={s}" for a, s in sizes.items())
