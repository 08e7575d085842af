"""The benchmark suite of separator (see README.md; run with `make bench`)."""
