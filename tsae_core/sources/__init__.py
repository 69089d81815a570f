"""Where activations come from: each source yields `SequenceBatch`es of whole contexts."""

from tsae_core.sources.base import SequenceBatch

__all__ = ["SequenceBatch"]
