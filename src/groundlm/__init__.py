"""groundlm: grounded vision-language models, one language model for many vision-language tasks."""

__version__ = "0.1.0"
