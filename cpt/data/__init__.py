"""The streaming loader: packs a stage manifest's token shards into document-masked sequences."""

from cpt.data.loader import IGNORE_INDEX, PackedLoader, PackedSequences, cu_seqlens, initial_state

__all__ = ["IGNORE_INDEX", "PackedLoader", "PackedSequences", "cu_seqlens", "initial_state"]
