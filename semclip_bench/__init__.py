"""semclip_bench: reference benchmark for few-shot defect detection in SEM wafer images."""

__version__ = "0.1.0"
