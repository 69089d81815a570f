"""The package version, a leaf module: the files tsae writes record it (`tsae_core.io.provenance`)."""

__version__ = "0.1.0"
