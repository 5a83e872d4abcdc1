"""The source package: dkms.conf read exactly as DKMS reads it, for one kernel."""
