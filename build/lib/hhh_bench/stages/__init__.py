"""Pipeline stages: each a Hydra-free ``run_<stage>(cfg, ...) -> dict`` on an OmegaConf config.

Each stage's output lives in ``<root>/<stage>/<key>/`` where ``key`` hashes the stage's resolved
config and its inputs' keys; a complete folder is reused (cached), a missing one is built inside a
temporary folder and renamed into place at the end.
"""
