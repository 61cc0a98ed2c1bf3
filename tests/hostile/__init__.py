"""Hostile-input probes: every command against bad input, interruption and misuse."""
