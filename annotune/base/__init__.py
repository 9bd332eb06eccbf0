"""The shared base every stage stands on: one-line errors and the parsers' pieces (cli.py), files
and atomic writes (files.py), the one table module (tables.py), the hub (hub.py) and fault
injection for the tests (faults.py). Imports nothing from the stages above it."""
