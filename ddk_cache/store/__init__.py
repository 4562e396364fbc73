"""Stage 3 of the data path: the teacher cache, a sharded, checksummed Zarr v3 store.

`layout` and `encoding` define the format (docs/cache-format.md), `writer` fills it shard by
shard, `reader` reads it back by sequence, and `report`, `report_text`, `selection` and
`verify` are `ddk inspect-cache`. Next stage: `ddk.cache.train` samples from the reader.
"""
