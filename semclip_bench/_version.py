"""The package version, defined here only: ``pyproject.toml`` reads it for the wheel's metadata,
and modules below the top-level package import it from here rather than from the package."""

__version__ = "0.1.0"
