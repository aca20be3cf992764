"""Where a training :class:`~tunnelscope.experiments.monitor.Monitor` plugs in and reports.

- :mod:`.writers`: a table file (CSV or Parquet), TensorBoard, Weights & Biases and MLflow;
- :mod:`.lightning`: a PyTorch Lightning ``Callback``;
- :mod:`.hf`: a Hugging Face ``TrainerCallback``;
- a plain loop needs no module: :meth:`Monitor.watch` wraps its batches.

Each third-party library is an optional extra (``tunnelscope[lightning]``, ``[hf]``,
``[tensorboard]``, ``[wandb]``, ``[mlflow]``), imported only by the module that needs it.
"""
