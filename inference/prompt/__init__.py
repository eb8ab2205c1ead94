"""skuvid's prompt engine and content safety gate.

``PromptEngine.load()`` reads the merchandiser-editable data files once; ``variants()`` plans A/B variants,
``build()`` screens a product and returns a typed ``schemas.events.Prompt``, ``check()`` is the safety
gate alone. Refusals raise ``ContentRefused`` carrying a ``schemas.events.Reason`` and the matched rule.
"""

from inference.prompt.engine import PromptEngine, prompt_hash
from inference.prompt.errors import ContentRefused
from inference.prompt.library import LibraryError
from inference.prompt.safety import SafetyVerdict
from inference.prompt.tokens import PROMPT_TOKEN_BUDGET, TEXT_ENCODER_MAX_TOKENS, estimate_tokens
from inference.prompt.variants import VariantSpec

__all__ = [
    "PROMPT_TOKEN_BUDGET",
    "TEXT_ENCODER_MAX_TOKENS",
    "ContentRefused",
    "LibraryError",
    "PromptEngine",
    "SafetyVerdict",
    "VariantSpec",
    "estimate_tokens",
    "prompt_hash",
]
