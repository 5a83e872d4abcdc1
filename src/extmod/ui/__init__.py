"""The command lines (extmod's and the drop-in dkms) and the documents generated from them."""
