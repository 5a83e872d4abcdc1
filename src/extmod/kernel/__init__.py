"""The target kernel and what it dictates: its tree and config, its toolchain, the ThinLTO
cache, signing, finishing modules (strip, sign, compress), where modules go and depmod."""
