"""The state tree: what is registered, built and installed (typed records, locks,
journals), and the status view of it."""
