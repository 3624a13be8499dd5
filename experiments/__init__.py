"""Experiments that turn the paper's claims into measured tables (see experiments/README.md)."""
