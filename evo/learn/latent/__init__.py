"""The latent store (issue 14): activations at a frozen cut, so layers above it learn from everything seen.

- `codec`: fp32 / fp16 / int8 (per-channel scales);
- `part`: one increment's latents on disk, written atomically, read memory-mapped;
- `store`: parts + live rows, the byte budget and class-balanced eviction, run-folder layout;
- `cut`: splitting a graph at the cut, and refusing growth below it;
- `below`: the pass below the cut that encodes an increment (once per image).
"""

from evo.learn.latent.below import encode_part
from evo.learn.latent.codec import CODECS, bytes_per_row, decode, encode
from evo.learn.latent.cut import (
    check_growth,
    check_layout,
    cut_node,
    merge_above,
    same_below,
    sites_above,
    split,
)
from evo.learn.latent.part import LatentError, Part, read_part, write_part
from evo.learn.latent.store import (
    LatentRows,
    LatentStore,
    StoreConfig,
    committed_parts,
    open_store,
    pending_dir,
    version_store_dir,
    write_pending,
)

__all__ = ["CODECS", "LatentError", "LatentRows", "LatentStore", "Part", "StoreConfig", "bytes_per_row",
           "check_growth", "check_layout", "committed_parts", "cut_node", "decode", "encode", "encode_part",
           "merge_above", "open_store", "pending_dir", "read_part", "same_below", "sites_above", "split",
           "version_store_dir", "write_part", "write_pending"]
