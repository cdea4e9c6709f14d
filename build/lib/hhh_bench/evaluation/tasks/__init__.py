"""lm-eval task YAMLs shipped with hhh-bench (toy3h/, real/) and their Python hooks (utils.py)."""
