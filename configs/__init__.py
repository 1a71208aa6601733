"""Configuration: the typed schema (`configs.schema`) and the YAML files beside it."""
from configs.schema import LightningDiTConfig, cfg_channels_value, load_config, parse_cli, to_container

__all__ = ["LightningDiTConfig", "cfg_channels_value", "load_config", "parse_cli", "to_container"]
