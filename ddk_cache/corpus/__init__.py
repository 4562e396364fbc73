"""Stage 1 of the data path: text files -> documents -> packed token sequences.

`sources` finds a domain's files and reads its documents, `packing` tokenises them into
fixed-length sequences with a train/validation split, `demo_corpus` locates the bundled
eight-domain corpus. Next stage: `ddk.cache.teacher` scores the packed sequences.
"""
