"""Putting finished modules into a kernel's module tree, journaled, and taking them out."""
