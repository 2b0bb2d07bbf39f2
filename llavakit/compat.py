"""The `LlaVa*` names of an older draft of the LLaVA API page, as aliases of llavakit's classes.

That page's example (`LlaVaForCausalLM.from_pretrained("liuhaotian/llava-v1.5-7b")`, sampling with
`do_sample=True, temperature=0.1, top_p=0.9`) runs as written: LlaVaForCausalLM is
LlavaForConditionalGeneration, which reads original liuhaotian checkpoints as well as llava-hf ones.
"""

from __future__ import annotations

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
LlaVaForCausalLM = LlavaForConditionalGeneration
LlaVaProcessor = LlavaProcessor
LlaVaForSequenceClassification = LlavaForSequenceClassification
LlaVaForTokenClassification = LlavaForTokenClassification
LlaVaForQuestionAnswering = LlavaForQuestionAnswering
LlaVaForMultipleChoice = LlavaForMultipleChoice
LlaVaForMaskedLM = LlavaForMaskedLM
