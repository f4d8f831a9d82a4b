"""Benchmarks of mlops-operator (``make bench``): tools that drive load, not part of the package."""
