"""Deployment to STM32MP2 boards: a self-checking bundle (model, preprocessing, board app, manifest),
pushed over SSH with verified host keys, verified on arrival, optionally launched.

``bundle.build_bundle`` / ``bundle.verify_bundle``: the bundle; ``push.deploy``: upload, verify, launch;
``stedgeai.generate_nb``: the NPU binary (.nb) from ST Edge AI Core; ``board_app/``: the files shipped to the board
(``segment.py`` needs neither TensorFlow nor segzoo).
"""
