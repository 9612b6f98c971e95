"""The benchmark runner behind ``sweep``, ``ablate``, ``report`` and ``verify``: it plans the
episodes of a run, fits and scores every method on them, and records rows, provenance and tables.
"""
