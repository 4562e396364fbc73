"""Stage 4 of the data path: the store -> domain sampler -> student (`ddk train-student`, `ddk eval`).

`loop.train` runs prepare -> fit -> finish over one `TrainState`; `sampler` draws sequences
by the domain weights that `ddk_weights` computes from `evaluate`'s perplexities; `step` is
one optimizer step through `ddk.kernels`. `config` (torch-free) holds `TrainConfig`.
"""
