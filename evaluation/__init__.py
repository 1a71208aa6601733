"""Evaluation library: ADM's metrics (`adm_metrics`), its Inception network (`inception`), batch
files (`npz`) and the evaluator (`adm`). The command lines live in `tools/`."""
