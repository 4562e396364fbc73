"""Stage 2 of the data path: packed sequences -> the teacher's top-k, tail mass and target.

`backend` is the contract every backend fulfils (`TeacherBackend.score` -> `TeacherScores`);
`transformers_backend` and `vllm_backend` implement it, `loading` builds one by name, and
`model_dir`, `default_model` and `identity` find, convert and fingerprint the teacher.
Next stage: `ddk.cache.store` writes the scores.
"""
