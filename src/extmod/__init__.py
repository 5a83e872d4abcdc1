"""extmod: build, sign, install and track out-of-tree Linux kernel modules."""

__version__ = "0.1.0"
