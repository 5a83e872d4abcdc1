"""The verbs over a command's session: registration, freshness, install/uninstall, planning
and autoinstall, import from DKMS, the kernel hooks, doctor."""
