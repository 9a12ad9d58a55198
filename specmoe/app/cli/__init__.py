"""The `specmoe` command line: one module per command group, shared flags in flags.py."""
