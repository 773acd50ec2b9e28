"""The ``rootleaf`` command line: one console script, subcommands owned by each tier."""
