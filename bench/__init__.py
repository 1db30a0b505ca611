"""bench: the `steer bench` benchmark suite (not tests).

Measures, in one process and interleaved (A B A B …, median of several repeats): decode speed with and without
steering (dense, exact fast path, reference SAE round trip), a batch of rows with distinct steering configs, the
HTTP server batched versus one request at a time, and YaPO training with the fast path versus the reference way.
Results are ratios measured on one machine in one run (docs/design.md, "Performance method").
"""
