"""The operations tooling: the command line and what its commands use."""
