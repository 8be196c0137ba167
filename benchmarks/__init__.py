"""Tools that measure the product: each runs as ``python -m benchmarks.<name>`` (``--help`` for its options).

- ``compare``: the comparison runner, (category, variant, seed) cells as train.py processes, then the tables;
  ``ablation.yml`` names the variants, ``results/results.csv`` keeps the recorded rows, ``results_table`` writes
  docs/results.md from them.
- ``bench_env``, ``bench_detector``, ``bench_metrics``: speed and memory of the env step, the detector and the metrics.
- ``per_type``: a finished run's pixel metrics per defect type, and the images that cost its pooled AUROC.
- ``kill_resume``: kills a run at three points and continues each with ``-i``, checking that it ends bit for bit as
  the uninterrupted run.
- ``ae_health``: whether an AE's output and gradients are alive.
- ``resize_category``: a pre-resized copy of an MVTec-layout category.
"""
