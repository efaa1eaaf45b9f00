"""restcp's benchmark suite: run it with ./bench/run (see bench/suite.py)."""
