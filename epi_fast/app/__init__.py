"""The `epi-fast` application: the command line, its data sets and its reports."""
