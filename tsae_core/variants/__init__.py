"""SAE variants: one file each, registered by architecture name in `registry`."""
