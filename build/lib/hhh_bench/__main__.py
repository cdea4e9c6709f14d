"""``python -m hhh_bench`` does what the ``hhh-bench`` command does."""

from hhh_bench.cli import main

main()
