"""Task heads on any LLaVA-family model: sequence / token classification, extractive QA, multiple choice.

transformers has these heads for text decoders (LlamaForSequenceClassification, ...) but not for LLaVA. Each
head here is written once, wraps the family's base model as `model` (LlavaModel, LlavaNextModel,
VipLlavaModel; Interleave is LlavaModel with SigLIP + Qwen2) and follows the Llama head of the same name:
tensor names (`score`, `qa_outputs`), pooling and losses. The per-family classes at the bottom only say
which base model and config to use. Loading a plain generation checkpoint gives a randomly initialised head.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from llavakit.config.base import PretrainedConfig
from llavakit.config.llava import LlavaConfig
from llavakit.config.llava_next import LlavaNextConfig
from llavakit.config.vipllava import VipLlavaConfig
from llavakit.deprecation import accepts_renamed_kwargs
from llavakit.models.base import PreTrainedModel
from llavakit.models.cache import DynamicCache
from llavakit.models.layers import init_weights
from llavakit.models.llava import LlavaModel
from llavakit.models.llava_next import LlavaNextModel
from llavakit.models.outputs import ModelOutput, Tensors, model_output
from llavakit.models.vipllava import VipLlavaModel

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")
LABEL_KWARGS = ("num_labels", "id2label", "label2id", "problem_type")


# ---- outputs ---------------------------------------------------------------------------------------
@model_output
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, num_labels)
    cache: DynamicCache | None = None
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class TokenClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, T, num_labels)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class QuestionAnsweringModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    start_logits: torch.Tensor | None = None  # (B, T)
    end_logits: torch.Tensor | None = None  # (B, T)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


@dataclasses.dataclass
class MultipleChoiceModelOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, num_choices)
    hidden_states: Tensors | None = None
    attentions: Tensors | None = None


# ---- labels in the config ---------------------------------------------------------------------------
def set_labels(config: PretrainedConfig, num_labels: int | None = None, id2label: dict | None = None,
               label2id: dict | None = None, problem_type: str | None = None) -> None:
    """Fill num_labels / id2label / label2id / problem_type on `config` as transformers keeps them.

    Arguments win over what the config holds; a num_labels that disagrees with id2label gives LABEL_i names.
    JSON turns id2label's keys into strings; they are read back as ints.
    """
    id2label = id2label if id2label is not None else getattr(config, "id2label", None)
    id2label = {int(k): v for k, v in id2label.items()} if id2label else None
    if num_labels is None:
        num_labels = getattr(config, "num_labels", None) or (len(id2label) if id2label else 2)
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    if id2label is None or len(id2label) != num_labels:
        id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    label2id = label2id if label2id is not None else getattr(config, "label2id", None)
    if not label2id or len(label2id) != num_labels:
        label2id = {name: i for i, name in id2label.items()}
    problem_type = problem_type if problem_type is not None else getattr(config, "problem_type", None)
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type must be one of {PROBLEM_TYPES} or None, got {problem_type!r}")
    config.num_labels, config.id2label, config.label2id = num_labels, id2label, dict(label2id)
    config.problem_type = problem_type


def _pad_token_id(config: PretrainedConfig) -> int | None:
    """LLaVA keeps `<pad>` on the top config (the processor pads with it); a text-only config on its own."""
    pad = getattr(config, "pad_token_id", None)
    return pad if pad is not None else getattr(config.text_config, "pad_token_id", None)


def last_non_pad_index(input_ids: torch.Tensor | None, pad_token_id: int | None, batch_size: int) -> torch.Tensor | int:
    """Per row, the rightmost position that is not padding (left or right padded alike); -1 when unknown."""
    if pad_token_id is None:
        if batch_size != 1:
            raise ValueError(f"Cannot handle batch sizes > 1 (got {batch_size}) if no padding token is defined: set "
                             f"config.pad_token_id")
        return -1
    if input_ids is None:
        return -1  # inputs_embeds: padding cannot be seen, as in transformers
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)  # (T,)
    return (positions * (input_ids != pad_token_id)).argmax(-1)  # (B,)


# ---- losses (transformers' loss_utils semantics) ----------------------------------------------------------
def sequence_classification_loss(logits: torch.Tensor, labels: torch.Tensor, config: PretrainedConfig) -> torch.Tensor:
    """MSE (regression), cross entropy (single label) or BCE-with-logits (multi label) on pooled (B, L) logits.

    With no config.problem_type it is inferred, and stored, as transformers does: one label means regression,
    integer labels single-label, anything else multi-label.
    """
    num_labels = config.num_labels
    labels = labels.to(logits.device)
    if config.problem_type is None:
        if num_labels == 1:
            config.problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            config.problem_type = "single_label_classification"
        else:
            config.problem_type = "multi_label_classification"
    if config.problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if config.problem_type == "single_label_classification":
        if labels.numel() != logits.shape[0]:
            raise ValueError(f"single-label classification needs one label per row: {logits.shape[0]} rows, "
                             f"labels {tuple(labels.shape)}")
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if labels.shape != logits.shape:
        raise ValueError(f"multi-label classification needs labels shaped like the logits {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, start_positions: torch.Tensor,
              end_positions: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross entropies; positions outside the sequence are ignored."""
    length = start_logits.shape[1]
    starts = start_positions.reshape(-1).to(start_logits.device).clamp(0, length)  # (B,)
    ends = end_positions.reshape(-1).to(end_logits.device).clamp(0, length)  # (B,)
    return (F.cross_entropy(start_logits, starts, ignore_index=length)
            + F.cross_entropy(end_logits, ends, ignore_index=length)) / 2


# ---- the generic heads ---------------------------------------------------------------------------------
class _TaskHead(PreTrainedModel):
    """The family's base model as `model`; subclasses add their head and forward."""

    config_class: ClassVar[type[PretrainedConfig]] = LlavaConfig
    base_model_class: ClassVar[type[LlavaModel]] = LlavaModel
    # parameter-name prefixes a checkpoint may lack: they start random (see load.py), e.g. `score.`
    _keys_new_on_load: ClassVar[tuple[str, ...]] = ()
    # from_pretrained arguments that are head options kept on the config (besides the label ones)
    _head_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        set_labels(config)
        self.model = self.base_model_class(config)

    @property
    def hidden_size(self) -> int:
        return self.config.text_config.hidden_size

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    @torch.no_grad()
    def init_new_parameters(self, names: list[str]) -> None:
        """Random init of head parameters the checkpoint did not have: normal(0, initializer_range), zero bias."""
        for name in names:
            param = self.get_parameter(name)
            if name.endswith("bias"):
                param.zero_()
            else:
                param.normal_(0.0, self.config.text_config.initializer_range)

    def _init_head(self) -> None:
        init_weights(self, self.config.text_config.initializer_range, skip=(PreTrainedModel,))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        """As PreTrainedModel.from_pretrained, plus num_labels / id2label / label2id / problem_type and the
        head's options (e.g. use_choice_classifier=True)."""
        labels = {k: kwargs.pop(k) for k in LABEL_KWARGS if kwargs.get(k) is not None}
        options = {k: kwargs.pop(k) for k in cls._head_options if k in kwargs}
        if labels or options:
            from llavakit.loading.load import HUB_KWARGS

            config = kwargs.pop("config", None)
            if config is None:
                hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
                config = cls.config_class.from_pretrained(pretrained_model_name_or_path, **hub)
            set_labels(config, **labels)
            for key, value in options.items():
                setattr(config, key, value)
            kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def _base(self, input_ids: torch.Tensor | None, pixel_values: torch.Tensor | None, **kwargs: Any):
        """The base model's output (last_hidden_state (B, T, H), cache, hidden states, attentions)."""
        return self.model(input_ids=input_ids, pixel_values=pixel_values, return_dict=True, **kwargs)


class SequenceClassificationHead(_TaskHead):
    """`score` (no bias) on the last non-pad token: logits (B, num_labels), loss chosen by config.problem_type."""

    _keys_new_on_load = ("score.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(self.hidden_size, self.num_labels, bias=False)
        self._init_head()

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **image_kwargs: Any) -> SequenceClassifierOutputWithPast | tuple:
        """`image_kwargs` go to the base model as they are (image_sizes, vision_feature_layer, ...)."""
        out = self._base(input_ids, pixel_values, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         **image_kwargs)
        logits = self.score(out.last_hidden_state)  # (B, T, L)
        batch = logits.shape[0]
        last = last_non_pad_index(input_ids, _pad_token_id(self.config), batch)
        pooled = logits[torch.arange(batch, device=logits.device), last]  # (B, L)
        loss = sequence_classification_loss(pooled, labels, self.config) if labels is not None else None
        result = SequenceClassifierOutputWithPast(loss=loss, logits=pooled, cache=out.cache,
                                                  hidden_states=out.hidden_states, attentions=out.attentions)
        return result if return_dict is not False else result.to_tuple()


class TokenClassificationHead(_TaskHead):
    """Dropout then `score` (with bias) on every position: logits (B, T, num_labels), cross entropy over tokens."""

    _keys_new_on_load = ("score.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        dropout = getattr(config, "classifier_dropout", None)
        dropout = getattr(config, "hidden_dropout", None) if dropout is None else dropout
        self.dropout = nn.Dropout(0.1 if dropout is None else dropout)
        self.score = nn.Linear(self.hidden_size, self.num_labels,
                               bias=getattr(config, "token_classification_bias", True))
        self._init_head()

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **image_kwargs: Any) -> TokenClassifierOutput | tuple:
        """`labels` (B, T), -100 where ignored (e.g. the `<image>` and pad positions)."""
        out = self._base(input_ids, pixel_values, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         **image_kwargs)
        logits = self.score(self.dropout(out.last_hidden_state))  # (B, T, L)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels {tuple(labels.shape)} must be (batch, seq_len) = {tuple(logits.shape[:2])}")
            loss = F.cross_entropy(logits.float().view(-1, self.num_labels), labels.reshape(-1).to(logits.device))
        result = TokenClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                       attentions=out.attentions)
        return result if return_dict is not False else result.to_tuple()


class QuestionAnsweringHead(_TaskHead):
    """`qa_outputs` (H -> 2) on every position: start and end logits (B, T) of the answer span."""

    _keys_new_on_load = ("qa_outputs.",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.qa_outputs = nn.Linear(self.hidden_size, 2)
        self._init_head()

    @accepts_renamed_kwargs
    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.LongTensor | None = None,
                cache: DynamicCache | None = None, inputs_embeds: torch.Tensor | None = None,
                start_positions: torch.LongTensor | None = None, end_positions: torch.LongTensor | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **image_kwargs: Any) -> QuestionAnsweringModelOutput | tuple:
        """The loss needs both `start_positions` and `end_positions` (B,); out-of-range positions are ignored."""
        out = self._base(input_ids, pixel_values, attention_mask=attention_mask, position_ids=position_ids,
                         cache=cache, inputs_embeds=inputs_embeds,
                         output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                         **image_kwargs)
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = (x.squeeze(-1).contiguous() for x in logits.split(1, dim=-1))  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start_logits, end_logits, start_positions, end_positions)
        result = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                              hidden_states=out.hidden_states, attentions=out.attentions)
        return result if return_dict is not False else result.to_tuple()


class MultipleChoiceHead(_TaskHead):
    """Scores each (image, question, option) row by the model's log-likelihood of the option's tokens.

    Inputs are (B, C, T): each of the C rows of a question is the prompt followed by one option, and
    `option_mask` (B, C, T) marks the option's tokens. Logits (B, C) are the summed log-probabilities (the
    mean per token with `length_normalized=True`). With `config.use_choice_classifier = True` a trained
    `classifier` (H -> 1) on each row's last non-pad token gives the logits instead. `labels` (B,) are the
    correct choices; the loss is cross entropy over the choices.
    """

    _keys_new_on_load = ("classifier.",)
    _head_options = ("use_choice_classifier",)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__(config)
        self.lm_head = nn.Linear(self.hidden_size, config.text_config.vocab_size, bias=False)
        self.classifier = nn.Linear(self.hidden_size, 1) if getattr(config, "use_choice_classifier", False) else None
        self._init_head()
        self.tie_weights()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def option_log_likelihood(self, input_ids: torch.LongTensor, option_mask: torch.Tensor,
                              pixel_values: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                              length_normalized: bool = False, **image_kwargs: Any) -> torch.Tensor:
        """log p(option tokens | everything before them) of each of N rows (N, T): a (N,) float32 tensor."""
        if option_mask.shape != input_ids.shape:
            raise ValueError(f"option_mask {tuple(option_mask.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}")
        targets = option_mask[:, 1:].bool()  # (N, T-1): token t+1 is predicted at position t
        counts = targets.sum(-1)  # (N,)
        if bool((counts == 0).any()):
            rows = (counts == 0).nonzero().flatten().tolist()
            raise ValueError(f"option_mask marks no option token (after the first position) in rows {rows}")
        hidden = self._base(input_ids, pixel_values, attention_mask=attention_mask, use_cache=False,
                            **image_kwargs).last_hidden_state  # (N, T, H)
        picked = hidden[:, :-1][targets]  # (n, H): only where an option token comes next
        log_probs = F.log_softmax(self.lm_head(picked).float(), dim=-1)  # (n, V)
        token_scores = log_probs.gather(-1, input_ids[:, 1:][targets][:, None]).squeeze(-1)  # (n,)
        rows = targets.nonzero()[:, 0]  # (n,)
        scores = torch.zeros(input_ids.shape[0], device=token_scores.device).index_add_(0, rows, token_scores)
        return scores / counts.to(scores) if length_normalized else scores  # (N,)

    def forward(self, input_ids: torch.LongTensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, option_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, length_normalized: bool = False,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, image_sizes: torch.Tensor | None = None,
                **image_kwargs: Any) -> MultipleChoiceModelOutput | tuple:
        """pixel_values: one image per question (repeated for its C rows) or the images of all B * C rows."""
        if input_ids is None or input_ids.ndim != 3:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be (batch, num_choices, seq_len), got {shape}")
        B, C, T = input_ids.shape
        flat = input_ids.reshape(B * C, T)  # (N, T)
        mask = None if attention_mask is None else attention_mask.reshape(B * C, T)
        if pixel_values is not None and pixel_values.shape[0] == B and C > 1:
            pixel_values = pixel_values.repeat_interleave(C, dim=0)  # one image per row
            if image_sizes is not None:
                image_sizes = torch.as_tensor(image_sizes).repeat_interleave(C, dim=0)
        if image_sizes is not None:
            image_kwargs["image_sizes"] = image_sizes
        if self.classifier is None:
            if option_mask is None:
                raise ValueError("option_mask (batch, num_choices, seq_len) is needed to score options by "
                                 "log-likelihood: 1 on each option's tokens")
            scores = self.option_log_likelihood(flat, option_mask.reshape(B * C, T), pixel_values, mask,
                                                length_normalized, **image_kwargs)
            out = None
        else:
            out = self._base(flat, pixel_values, attention_mask=mask, use_cache=False,
                             output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                             **image_kwargs)
            last = last_non_pad_index(flat, _pad_token_id(self.config), B * C)
            pooled = out.last_hidden_state[torch.arange(B * C, device=flat.device), last]  # (N, H)
            scores = self.classifier(pooled).squeeze(-1)  # (N,)
        logits = scores.view(B, C)  # (B, C)
        loss = F.cross_entropy(logits.float(), labels.reshape(-1).to(logits.device)) if labels is not None else None
        result = MultipleChoiceModelOutput(loss=loss, logits=logits)
        if out is not None:
            result.hidden_states, result.attentions = out.hidden_states, out.attentions
        return result if return_dict is not False else result.to_tuple()


def choice_inputs(processor: Any, prompt: str, options: list[str], images: Any = None) -> dict[str, torch.Tensor]:
    """A ForMultipleChoice model's inputs for one question: input_ids / attention_mask / option_mask (1, C, T),
    plus the processor's image tensors (pixel_values, image_sizes) for the question's image(s).

    Each row is the prompt's tokens followed by the option's own tokens (encoded without special tokens, as
    the continuation of the prompt), right-padded; option_mask is 1 on the option's tokens.
    """
    if not options:
        raise ValueError("a multiple-choice question needs at least one option")
    encoded = processor(images=images, text=prompt, return_tensors="pt")
    prompt_ids = encoded["input_ids"][0]  # (P,)
    tokenizer = getattr(processor, "tokenizer", processor)
    option_ids = [tokenizer(str(option), add_special_tokens=False)["input_ids"] for option in options]
    empty = [i for i, ids in enumerate(option_ids) if not ids]
    if empty:
        raise ValueError(f"options {empty} encode to no tokens: {[options[i] for i in empty]}")
    length = len(prompt_ids) + max(len(ids) for ids in option_ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(options), length), pad, dtype=torch.long)  # (C, T)
    attention_mask = torch.zeros_like(input_ids)  # (C, T)
    option_mask = torch.zeros_like(input_ids)  # (C, T)
    for row, ids in enumerate(option_ids):
        end = len(prompt_ids) + len(ids)
        input_ids[row, :end] = torch.cat([prompt_ids, torch.tensor(ids, dtype=torch.long)])
        attention_mask[row, :end] = 1
        option_mask[row, len(prompt_ids):end] = 1
    out = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask")}
    out.update(input_ids=input_ids[None], attention_mask=attention_mask[None], option_mask=option_mask[None])
    return out


class LlavaForMaskedLM:
    """Placeholder for the old page's `...ForMaskedLM`: LLaVA's decoder is causal, so there is no such head."""

    MESSAGE = ("LLaVA models have no masked-LM head: the language model is a causal decoder, which predicts the next "
               "token, not masked ones. Use LlavaForConditionalGeneration (alias LlaVaForCausalLM; "
               "LlavaNextForConditionalGeneration / VipLlavaForConditionalGeneration for those families) for token "
               "prediction, or a ...ForSequenceClassification / ...ForTokenClassification head.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(self.MESSAGE)

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(cls.MESSAGE)

    from_config = from_pretrained


# ---- the per-family classes ---------------------------------------------------------------------------
class _Next:
    config_class = LlavaNextConfig
    base_model_class = LlavaNextModel


class _Vip:
    config_class = VipLlavaConfig
    base_model_class = VipLlavaModel


class LlavaForSequenceClassification(SequenceClassificationHead):
    """LLaVA-1.5 / Interleave with a sequence classification head."""


class LlavaForTokenClassification(TokenClassificationHead):
    """LLaVA-1.5 / Interleave with a token classification head."""


class LlavaForQuestionAnswering(QuestionAnsweringHead):
    """LLaVA-1.5 / Interleave with a span (extractive QA) head."""


class LlavaForMultipleChoice(MultipleChoiceHead):
    """LLaVA-1.5 / Interleave scoring options by log-likelihood."""


class LlavaNextForSequenceClassification(_Next, SequenceClassificationHead):
    """LLaVA-NeXT with a sequence classification head."""


class LlavaNextForTokenClassification(_Next, TokenClassificationHead):
    """LLaVA-NeXT with a token classification head."""


class LlavaNextForQuestionAnswering(_Next, QuestionAnsweringHead):
    """LLaVA-NeXT with a span (extractive QA) head."""


class LlavaNextForMultipleChoice(_Next, MultipleChoiceHead):
    """LLaVA-NeXT scoring options by log-likelihood."""


class VipLlavaForSequenceClassification(_Vip, SequenceClassificationHead):
    """ViP-LLaVA with a sequence classification head."""


class VipLlavaForTokenClassification(_Vip, TokenClassificationHead):
    """ViP-LLaVA with a token classification head."""


class VipLlavaForQuestionAnswering(_Vip, QuestionAnsweringHead):
    """ViP-LLaVA with a span (extractive QA) head."""


class VipLlavaForMultipleChoice(_Vip, MultipleChoiceHead):
    """ViP-LLaVA scoring options by log-likelihood."""


LlavaNextForMaskedLM = VipLlavaForMaskedLM = LlavaForMaskedLM

# model_type -> head class, for code that picks the family from a config (e.g. `llavakit eval-mc`)
MULTIPLE_CHOICE_CLASSES = {"llava": LlavaForMultipleChoice, "llava_next": LlavaNextForMultipleChoice,
                           "vipllava": VipLlavaForMultipleChoice}
