"""autoglm_serve: the built-in OpenAI-compatible server of autoglm.deploy (torch + transformers, stdlib HTTP).

It serves one local causal language model, or vision-language model (GLM-4.1V, AutoGLM-Phone: image_url parts,
see media.py), for CPU nodes, small GPUs and the lab, where vLLM or SGLang do not fit: /v1/models,
/v1/chat/completions (plain and SSE streaming), /health and /metrics.
Run it with ``python -m autoglm_serve --model /path/to/weights``; see ``python -m autoglm_serve --help``.
"""
from __future__ import annotations

__version__ = "0.1.0"
