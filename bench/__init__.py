"""Benchmarks that print their figures next to a baseline measured in the same run.

Run them all with `python -m bench.run_all` (the `make bench` target); each one also runs
alone, e.g. `python -m bench.submit --quick`. They are not part of the test suite.
"""
