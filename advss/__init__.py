"""advss: adversarial robustness from self-supervised pretraining to fine-tuning.

Kept import-light on purpose: the Snakefile imports `advss.protocol` at parse
time, and a dry run must not pay for importing torch.
"""
__version__ = "0.1.0"
