"""Entry point: ``python stm32ai_main.py [key=value ...]`` runs ``operation_mode`` of user_config.yaml.

Examples:
    python stm32ai_main.py
    python stm32ai_main.py operation_mode=evaluation general.model_path=model.tflite
    python stm32ai_main.py --config-path config_file_examples --config-name training_camvid
"""

import sys

import hydra
from omegaconf import DictConfig

from segzoo.cli import preflight, run


@hydra.main(version_base=None, config_path=".", config_name="user_config")
def main(cfg: DictConfig) -> None:
    """Hydra composes the config; segzoo validates and runs it."""
    run(cfg)


if __name__ == "__main__":
    sys.argv = preflight(sys.argv)
    main()
