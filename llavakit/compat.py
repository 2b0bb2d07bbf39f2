"""The `LlaVa*` names of an older draft of the LLaVA API page, as aliases of llavakit's classes.

That page's example (`LlaVaForCausalLM.from_pretrained("liuhaotian/llava-v1.5-7b")`, sampling with
`do_sample=True, temperature=0.1, top_p=0.9`) runs as written: LlaVaForCausalLM is a
LlavaForConditionalGeneration whose from_pretrained reads original liuhaotian checkpoints (v1.5 and the
anyres v1.6) as well as llava-hf ones.
"""

from __future__ import annotations

from typing import Any

from llavakit.config.llava import LlavaConfig
from llavakit.models.heads import (LlavaForMaskedLM, LlavaForMultipleChoice, LlavaForQuestionAnswering,
                                   LlavaForSequenceClassification, LlavaForTokenClassification)
from llavakit.models.llava import LlavaForConditionalGeneration, LlavaModel
from llavakit.processing.llava import LlavaProcessor
from llavakit.processing.tokenizer import LlamaTokenizerFast

LlaVaConfig = LlavaConfig
LlaVaTokenizer = LlamaTokenizerFast  # llavakit has one (fast) tokenizer implementation
LlaVaTokenizerFast = LlamaTokenizerFast
LlaVaModel = LlavaModel


class LlaVaForCausalLM(LlavaForConditionalGeneration):
    """The page's causal-LM name. `from_pretrained` picks the class the checkpoint needs, as
    AutoModelForImageTextToText does: an original llava-v1.6 (anyres) folder gives a
    LlavaNextForConditionalGeneration, a ViP-LLaVA one a VipLlavaForConditionalGeneration."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> LlavaForConditionalGeneration:
        from llavakit.models.auto import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(*args, **kwargs)


LlaVaProcessor = LlavaProcessor
LlaVaForSequenceClassification = LlavaForSequenceClassification
LlaVaForTokenClassification = LlavaForTokenClassification
LlaVaForQuestionAnswering = LlavaForQuestionAnswering
LlaVaForMultipleChoice = LlavaForMultipleChoice
LlaVaForMaskedLM = LlavaForMaskedLM
