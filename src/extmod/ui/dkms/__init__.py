"""The ``dkms`` command line (docs/reference/dkms.md): DKMS's arguments parsed into a
request (``args``), what every action shares (``front``), the actions by kind (``add``:
add, mktarball, ldtarball; ``verbs``: build … remove, autoinstall and the kernel hooks;
``report``: status, match, generate_mok; ``postinst``: ``common.postinst``), and ``cli``,
which dispatches and turns the outcome into DKMS's output and exit codes."""
