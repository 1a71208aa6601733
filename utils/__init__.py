"""Leaf utilities shared by the library and the commands: atomic file writes (`fileio`), seeds and
RNG states (`seeding`), the process/logging setup of every entry script (`runtime`).

Nothing here imports another package of this repository.
"""
