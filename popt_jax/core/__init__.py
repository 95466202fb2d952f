"""Model-agnostic pieces every job is built from (imports no model family).

`mesh` (devices, data-parallel mesh, batch placement), `steps` (jitted train/eval steps,
dropout keys), `loop` (restore-or-init, run steps with periodic validation and checkpoints,
best checkpoint, results), `checkpoints` (Orbax manager + data-iterator state + run
identity), `logs` (the one progress/ETA logger `Progress`, metrics.jsonl, TensorBoard),
`tb_writer`, `jsonio`, `metrics` (ROC-AUC, F1, clu helpers), `torch_pickle` + `torch_io`
(reading PyTorch checkpoints, one strict state-dict mechanism), `nn` (PyTorch-style init,
buffers, casts), `overview`, `config_lib`.
"""
