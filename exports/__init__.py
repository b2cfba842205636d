"""Training files from clinicians' preferences: SFT, DPO, OpenAI-DPO, KTO and HF-dataset exports,
shared filters, PII scrubbing, manifests, and the OpenAI fine-tuning loop.

Entry points: :func:`exports.run.run_export` (every export kind) and
:func:`exports.openai_ft.run_finetune` (``therapref finetune openai``).
"""

from exports.errors import ExportError
from exports.filters import ExportFilters

__all__ = ["ExportError", "ExportFilters"]
