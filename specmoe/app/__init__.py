"""The user-facing layer: the Python API, the command line and reports."""
