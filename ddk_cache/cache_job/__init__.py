"""`ddk cache-teacher`: stages 1 -> 2 -> 3 (corpus, teacher, store) as one restartable job.

`config` holds `CacheJobConfig` (torch-free, so the CLI reads its defaults at start-up),
`config_file` reads TOML/YAML options and domains, `run` is `run_cache_job`.
"""
