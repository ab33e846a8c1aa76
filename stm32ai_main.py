"""Entry point: ``python stm32ai_main.py [key=value ...]`` runs ``operation_mode`` of user_config.yaml.

Examples:
    python stm32ai_main.py
    python stm32ai_main.py operation_mode=evaluation general.model_path=model.tflite
    python stm32ai_main.py --config-path config_file_examples --config-name training_camvid

Exit codes: 0 done; 2 configuration, 3 data, 4 model, 5 board errors; 6 done with skipped items; 7 disk full.
"""

import sys

import hydra
from omegaconf import DictConfig

from segzoo.cli import preflight, run_and_exit


@hydra.main(version_base=None, config_path=".", config_name="user_config")
def main(cfg: DictConfig) -> None:
    """Hydra composes the config; segzoo validates and runs it."""
    run_and_exit(cfg)


if __name__ == "__main__":
    sys.argv = preflight(sys.argv)
    main()
