"""From the composed Hydra/OmegaConf config to a validated ``Config``, and back to plain data."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from segzoo.config.checks import check_mode, check_values
from segzoo.config.schema import Config
from segzoo.config.validate import build_config, raise_if_errors

SECRET_KEY = re.compile(r"(password|passphrase|secret|token|api_key|private_key)", re.IGNORECASE)
REDACTED = "***"


def load_config(data: Any) -> Config:
    """Validate a plain dict or an OmegaConf config; raise one ConfigError listing every problem."""
    if not isinstance(data, dict):
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(data, resolve=True)
    cfg, errors = build_config(data)
    errors += check_values(cfg)
    if not errors:
        errors += check_mode(cfg)
    raise_if_errors(errors)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain nested data, secrets redacted."""
    return redact(dataclasses.asdict(cfg))


def redact(data: Any) -> Any:
    """Replace the value of every secret-looking key (password, token, ...) by '***', recursively."""
    if isinstance(data, dict):
        return {k: (REDACTED if SECRET_KEY.search(str(k)) and v not in (None, "") else redact(v))
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict to {'a.b.c': value} (lists kept as values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out
