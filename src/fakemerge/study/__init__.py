"""The research protocol on ForgeryLab that `fakemerge demo` and benchmarks/quality.py run: named model
entries (`entries`), training reused when nothing that defines it changed (`cache`), merges tuned on
validation with one budget per method and calibrated (`tuning`), the FMSD and optimizer ablations
(`ablation`), and — over one or more seeds — the tables and the findings computed from them (`seeds`,
`findings`). Nothing here reads the test split to choose anything.
"""
