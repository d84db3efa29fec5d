"""One typed configuration for every stage: data → split → windows → model → train → evaluate.

The YAML file, the CLI overrides and the defaults are merged and validated here, once. Every
other module receives the resulting `Config` (or one of its sections) and trusts it. Each
section lives in the module named after what it configures; this package's names are the ones
the rest of the code imports.
"""

from forecast.config.data import DataConfig, SplitConfig, WindowConfig
from forecast.config.jobs import PipelineConfig, TrackingConfig
from forecast.config.loading import (
    apply_overrides,
    build_config,
    dump_config,
    load_config,
    set_dotted,
)
from forecast.config.model import ModelConfig
from forecast.config.root import Config, integer_setting
from forecast.config.search import Range, TuneConfig
from forecast.config.training import EvalConfig, TrainConfig

__all__ = [
    "Config", "DataConfig", "EvalConfig", "ModelConfig", "PipelineConfig", "Range",
    "SplitConfig", "TrackingConfig", "TrainConfig", "TuneConfig", "WindowConfig",
    "apply_overrides", "build_config", "dump_config", "integer_setting", "load_config",
    "set_dotted",
]
