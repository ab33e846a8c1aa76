"""Configuration: typed schema, validation with closest-key suggestions, override checks."""

from segzoo.config.loading import config_to_dict, load_config, redact
from segzoo.config.schema import Config

__all__ = ["Config", "config_to_dict", "load_config", "redact"]
