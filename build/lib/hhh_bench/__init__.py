"""hhh-bench: mix data or merge models to balance helpfulness, honesty and harmlessness."""

__version__ = "0.1.0"
