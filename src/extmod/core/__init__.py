"""The ground floor: errors and exit codes, paths, atomic writes, running commands,
settings, digests, progress. Imports nothing of extmod above it."""
