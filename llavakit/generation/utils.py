"""GenerationMixin.generate: greedy and sampled decoding with a KV cache, with transformers' semantics.

One prefill call runs the prompt (and the images: pixel_values & co. go to the prefill only), then each step
feeds just the newest token with the cache. Options, their defaults and precedence, the logits-processor
order, the RNG use and the stop rules follow transformers' `generate`, so the same seed gives the same tokens.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings
from typing import Any

import torch

from llavakit.generation.config import (_FIELD_NAMES, MOVED_OUT_OPTIONS, UNSUPPORTED_OPTIONS, GenerationConfig,
                                        check_supported)
from llavakit.generation.engine import DecodeStep, bucketed, language_model
from llavakit.generation.guidance import UnbatchedClassifierFreeGuidanceLogitsProcessor
from llavakit.generation.logits import (EncoderRepetitionPenaltyLogitsProcessor, EpsilonLogitsWarper,
                                        EtaLogitsWarper, ExponentialDecayLengthPenalty,
                                        ForcedBOSTokenLogitsProcessor, ForcedEOSTokenLogitsProcessor,
                                        LogitNormalization, LogitsProcessorList, MinLengthLogitsProcessor,
                                        MinNewTokensLengthLogitsProcessor, MinPLogitsWarper,
                                        NoBadWordsLogitsProcessor, NoRepeatNGramLogitsProcessor,
                                        RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor,
                                        SuppressTokensAtBeginLogitsProcessor, SuppressTokensLogitsProcessor,
                                        TemperatureLogitsWarper, TopHLogitsWarper, TopKLogitsWarper,
                                        TopPLogitsWarper, TypicalLogitsWarper)
from llavakit.generation.watermark import WatermarkingConfig
from llavakit.generation.prefix_cache import PrefixCache, content_key
from llavakit.generation.stopping import (EosTokenCriteria, MaxLengthCriteria, MaxTimeCriteria,
                                          StoppingCriteriaList, StopStringCriteria)
from llavakit.models.cache import DynamicCache, StaticCache
from llavakit.models.outputs import ModelOutput, merged_features

logger = logging.getLogger(__name__)


class _DeprecatedPastKeyValues:
    """`output.past_key_values`: the old name of `output.cache` (transformers 5.24 renamed it)."""

    @property
    def past_key_values(self) -> Any:
        warnings.warn("`past_key_values` of a generate output is deprecated; read `.cache` instead",
                      FutureWarning, stacklevel=2)
        return self.cache


@dataclasses.dataclass
class GenerateDecoderOnlyOutput(_DeprecatedPastKeyValues, ModelOutput):
    """What `generate(..., return_dict_in_generate=True)` returns. `scores`/`logits`: one (B, V) per new token;
    `attentions`/`hidden_states`: per new token, the forward's per-layer tuple."""

    sequences: torch.LongTensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: DynamicCache | StaticCache | None = None


@dataclasses.dataclass
class GenerateBeamDecoderOnlyOutput(_DeprecatedPastKeyValues, ModelOutput):
    """Beam search's output: `sequences_scores` (B*n,) length-normalised log-probabilities of the returned
    beams, `beam_indices` (B*n, new) the flat beam each token came from (-1 past the end)."""

    sequences: torch.LongTensor | None = None
    sequences_scores: torch.Tensor | None = None
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None
    beam_indices: torch.LongTensor | None = None
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: DynamicCache | StaticCache | None = None


@dataclasses.dataclass
class _Prompt:
    """The validated inputs of one generate call."""

    input_ids: torch.LongTensor  # (B, T) ids the output starts with; (B, 0) for an embeddings-only prompt
    inputs_embeds: torch.Tensor | None  # (B, T_embeds, H) fed instead of the ids at prefill
    attention_mask: torch.Tensor  # (B, T_prompt) 0/1
    position_ids: torch.LongTensor  # (B or 1, T_prompt)
    length: int  # T_prompt: positions the prefill runs


# Model inputs that only concern the images and videos: the prefix cache handles them (keyed by their content);
# any other model input bypasses it. The tensors come first, then the vision settings that shape the features.
IMAGE_KWARGS = ("pixel_values", "image_sizes", "batch_num_images", "pixel_values_videos", "vision_feature_layer",
                "vision_feature_layers", "vision_feature_select_strategy")
MEDIA_TENSORS = IMAGE_KWARGS[:4]  # batch_num_images: OneVision's images per prompt, which shapes their features


@dataclasses.dataclass
class _Reuse:
    """How one batch-size-1 call uses the model's prefix cache."""

    store: PrefixCache
    images: str | None  # content key of the call's images and vision settings; None without images
    cache: DynamicCache | None  # the reused KV prefix, or None to prefill the whole prompt


class GenerationMixin:
    """Adds `generate` to a model whose forward follows the transformers causal-LM signature."""

    @property
    def prefix_cache(self) -> PrefixCache:
        """This model's KV-prefix and image-feature caches (created on first use; `.enabled = False` turns off)."""
        cache = self.__dict__.get("_prefix_cache")
        if cache is None:
            cache = self.__dict__["_prefix_cache"] = PrefixCache()
        return cache

    @torch.no_grad()
    def generate(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                 pixel_values: torch.Tensor | None = None, generation_config: GenerationConfig | None = None,
                 streamer: Any = None, stop_strings: str | list[str] | None = None, tokenizer: Any = None,
                 logits_processor: list | None = None, stopping_criteria: list | None = None,
                 prefix_cache: bool | None = None, compile: bool | None = None, assistant_model: Any = None,
                 negative_prompt_ids: torch.LongTensor | None = None,
                 negative_prompt_attention_mask: torch.LongTensor | None = None,
                 **kwargs: Any) -> torch.LongTensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
        """Continue the prompt; returns prompt + new ids (B, T + new), or an output object with `.sequences`.

        kwargs are generation options (max_new_tokens, do_sample, temperature, num_beams, ...) overriding the
        model's `generation_config`, or model inputs (image_sizes, inputs_embeds, vision_feature_layer, ...)
        that go to the prefill call. Finished rows are filled with pad_token_id until every row is done.
        `num_return_sequences` > 1 returns that many rows per prompt (row i*n + j), like transformers.
        `cache=` continues from a KV cache (`past_key_values=` is its deprecated name).
        `prefix_cache=False` neither reads nor fills `model.prefix_cache` (KV prefixes and image features)
        in this call; None follows `model.prefix_cache.enabled`.
        Greedy/sampling use a pre-allocated StaticCache (`cache_implementation="dynamic"` grows one instead); on
        CUDA its decode step is compiled into CUDA graphs. `compile=False` (or `disable_compile=True`) keeps
        it eager, `compile=True` compiles on any device. A compiled model reuses its cache buffers across
        calls, so a returned `cache` is valid until the next generate call. Beam search, several sequences
        per prompt and assisted decoding (`prompt_lookup_num_tokens`, `assistant_model`) use a DynamicCache.
        """
        if "inputs" in kwargs:
            if input_ids is not None:
                raise ValueError("pass the prompt as `inputs` or `input_ids`, not both")
            input_ids = kwargs.pop("inputs")
        given_cache = _given_cache(kwargs)
        config, model_kwargs = self._generation_config(generation_config, stop_strings, kwargs)
        config.check_for_generate()
        if assistant_model is not None and (config.num_beams > 1 or config.do_sample):
            raise ValueError("assistant_model (assisted decoding) works with greedy decoding only "
                             "(do_sample=False, num_beams=1)")
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        self._check_model_kwargs(model_kwargs)
        if given_cache is not None:
            model_kwargs["cache"] = given_cache
        attention_mask_given = attention_mask is not None
        prompt = self._prepare_prompt(input_ids, attention_mask, model_kwargs, config)
        B = prompt.input_ids.shape[0]
        expand = max(config.num_beams, config.num_return_sequences)  # rows per prompt while decoding
        if streamer is not None and (B != 1 or expand != 1):
            raise ValueError(f"streamers support batch size 1 only, got a batch of {B} prompt(s) x {expand} "
                             "sequence(s) each (num_beams / num_return_sequences)")
        eos, pad = self._special_tokens(config, attention_mask_given, B, prompt)
        max_length, min_length = self._lengths(config, prompt)
        processors = self._logits_processors(config, prompt, eos, min_length, max_length, expand, logits_processor,
                                             negative_prompt_ids, negative_prompt_attention_mask)
        criteria = self._stopping_criteria(config, max_length, eos, tokenizer, stopping_criteria)
        new_tokens = max_length - prompt.input_ids.shape[1]
        if config.num_beams > 1:
            from llavakit.generation.beam_search import beam_search

            return beam_search(self, prompt, model_kwargs, config, processors, criteria, eos, pad, max_length)
        if assistant_model is not None or config.prompt_lookup_num_tokens is not None:
            from llavakit.generation.assisted import assisted_decoding

            return assisted_decoding(self, assistant_model, prompt, model_kwargs, config, processors, criteria,
                                     eos, pad, max_length, streamer)
        reuse = self._prefix_reuse(prompt, model_kwargs, config, prefix_cache) if expand == 1 else None
        return self._decode(prompt, model_kwargs, config, processors, criteria, eos is not None, pad, streamer,
                            reuse, new_tokens, compile, expand)

    # ---- options ---------------------------------------------------------------------------------
    def _generation_config(self, generation_config: GenerationConfig | None, stop_strings: Any,
                           kwargs: dict[str, Any]) -> tuple[GenerationConfig, dict[str, Any]]:
        """The call's options (kwargs > given config > model's generation_config > defaults) and model kwargs."""
        for name in set(kwargs) & (set(MOVED_OUT_OPTIONS) | set(UNSUPPORTED_OPTIONS)):
            check_supported(name, kwargs[name])
        model_default = getattr(self, "generation_config", None)
        if model_default is None:
            model_default = GenerationConfig.from_model_config(self.config)
        if generation_config is not None and not isinstance(generation_config, GenerationConfig):
            if not hasattr(generation_config, "to_diff_dict"):
                raise TypeError(f"generation_config must be a GenerationConfig, got {type(generation_config).__name__}")
            generation_config = GenerationConfig.from_dict(generation_config.to_diff_dict())  # e.g. transformers'
        config = (generation_config or GenerationConfig()).merged_with_defaults(model_default)
        ignored = set(MOVED_OUT_OPTIONS) | set(UNSUPPORTED_OPTIONS)  # checked above: set to "off"
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in _FIELD_NAMES or k in ignored}
        if stop_strings is not None:
            options["stop_strings"] = stop_strings
        config.update(**{k: v for k, v in options.items() if k not in ignored})
        model_kwargs = {k: v for k, v in kwargs.items() if v is not None}
        return config, model_kwargs

    def _check_model_kwargs(self, model_kwargs: dict[str, Any]) -> None:
        set_by_generate = sorted(set(model_kwargs) & {"return_dict", "logits_to_keep", "labels", "cache_position"})
        if set_by_generate:
            raise ValueError(f"generate sets {set_by_generate} itself; do not pass them")
        params = inspect.signature(self.forward).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        unknown = sorted(k for k in model_kwargs if k not in params)
        if unknown:
            raise ValueError(f"generate got arguments that are neither generation options nor inputs of "
                             f"{type(self).__name__}.forward: {unknown} (check for typos)")

    # ---- prompt ----------------------------------------------------------------------------------
    def _prepare_prompt(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None,
                        model_kwargs: dict[str, Any], config: GenerationConfig) -> _Prompt:
        inputs_embeds = model_kwargs.pop("inputs_embeds", None)
        if input_ids is not None:
            if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
                shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
                raise ValueError(f"input_ids must be an integer tensor (batch, seq_len), got {shape}; "
                                 "for one prompt add the batch dimension: input_ids[None]")
        if inputs_embeds is not None:
            if inputs_embeds.ndim != 3:
                raise ValueError(f"inputs_embeds must be (batch, seq_len, hidden), got {tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
            if input_ids is None:  # the output holds only the new tokens, as in transformers
                input_ids = torch.ones((B, 0), dtype=torch.long, device=inputs_embeds.device)
            elif tuple(input_ids.shape) != (B, T):
                raise ValueError(f"input_ids {tuple(input_ids.shape)} and inputs_embeds {(B, T)} must cover the same "
                                 "tokens")
        else:
            if input_ids is None:
                if config.bos_token_id is None:
                    raise ValueError("generate needs input_ids (or inputs_embeds); without them it starts from "
                                     "bos_token_id, which is not set")
                B = attention_mask.shape[0] if attention_mask is not None else 1
                input_ids = torch.full((B, 1), config.bos_token_id, dtype=torch.long, device=self.device)
            B, T = input_ids.shape
            if T == 0:
                raise ValueError("input_ids is empty (seq_len 0): give at least one prompt token")

        if attention_mask is None:
            attention_mask = torch.ones((B, T), dtype=torch.long, device=input_ids.device)
            pad, eos = config.pad_token_id, _as_list(config.eos_token_id)
            if pad is not None and bool((input_ids == pad).any()) and pad not in eos:
                attention_mask = (input_ids != pad).long()  # infer the padding from pad tokens
        elif attention_mask.ndim != 2 or tuple(attention_mask.shape) != (B, T):
            raise ValueError(f"attention_mask must be 2-D (batch, seq_len) = ({B}, {T}) like the prompt, got "
                             f"{tuple(attention_mask.shape)}")

        position_ids = model_kwargs.pop("position_ids", None)
        if position_ids is None:
            # Left padding: real tokens count from 0 after the pads (the pads' own positions are masked anyway).
            position_ids = attention_mask.long().cumsum(-1) - 1  # (B, T)
            position_ids = position_ids.masked_fill(attention_mask == 0, 0)
        return _Prompt(input_ids, inputs_embeds, attention_mask, position_ids, T)

    def _special_tokens(self, config: GenerationConfig, attention_mask_given: bool, B: int,
                        prompt: _Prompt) -> tuple[list[int] | None, int | None]:
        """EOS ids as a list (or None) and the id written into finished rows (pad, else the first EOS)."""
        eos, pad = _as_list(config.eos_token_id) or None, config.pad_token_id
        if pad is None and eos is not None:
            if not attention_mask_given and B > 1:
                logger.warning("The attention mask and the pad token id were not set, with a batched input: "
                               "pass the attention_mask your processor/tokenizer returned for reliable results.")
            pad = eos[0]
        if pad is not None and B > 1 and prompt.input_ids.shape[1] > 0:
            if bool((prompt.attention_mask[:, -1] == 0).any()):
                logger.warning("A decoder-only model is generating from right-padded prompts; results will be "
                               "wrong. Pad on the left: tokenizer/processor padding_side='left'.")
        return eos, pad

    def _lengths(self, config: GenerationConfig, prompt: _Prompt) -> tuple[int, int]:
        """Final max_length and min_length (prompt included), with transformers' precedence rules."""
        n_ids, n_embeds = prompt.input_ids.shape[1], prompt.length
        embeds_only = n_ids == 0  # an inputs_embeds prompt without ids
        default_max = not config.is_set("max_length")
        context = self._context_length()
        max_length = config.max_length
        if config.max_new_tokens is not None:
            if not default_max:
                logger.warning(f"Both max_new_tokens (={config.max_new_tokens}) and max_length (={max_length}) are "
                               "set; max_new_tokens takes precedence.")
            max_length = config.max_new_tokens + n_ids
        elif embeds_only and not default_max:
            max_length -= n_embeds  # an explicit max_length counts the embedded prompt too
        elif default_max:
            warnings.warn(f"Using the default max_length (={config.max_length}) to control the generation length; "
                          "set max_new_tokens instead.", UserWarning, stacklevel=4)
            max_length = config.max_length + n_ids
            if context is not None:
                max_length = min(max_length, context + n_ids - n_embeds)
        new_tokens = max_length - n_ids
        if context is not None and n_embeds + max(new_tokens, 1) > context:
            raise ValueError(f"prompt of {n_embeds} tokens + {new_tokens} new tokens = {n_embeds + new_tokens} "
                             f"exceeds the model's context of {context} tokens (max_position_embeddings); "
                             "shorten the prompt or lower max_new_tokens")
        if new_tokens <= 0:
            raise ValueError(f"the prompt has {n_ids} tokens but max_length is {max_length}: nothing to generate; "
                             "set max_new_tokens instead")

        min_length = config.min_length
        if config.min_new_tokens is not None:
            min_length = config.min_new_tokens + n_ids
        elif embeds_only:
            min_length = max(min_length - n_embeds, 0)
        if min_length > max_length:
            warnings.warn(f"min length {min_length} (prompt included) is larger than max_length {max_length}; "
                          "generation stops at max_length.", UserWarning, stacklevel=4)
        return max_length, min_length

    def _context_length(self) -> int | None:
        """Positions the decoder was trained for, None when unbounded (dynamic RoPE)."""
        text_config = getattr(self.config, "text_config", None) or self.config
        context = getattr(text_config, "max_position_embeddings", None)
        rope = getattr(text_config, "rope_parameters", None) or {}
        return None if rope.get("rope_type") == "dynamic" else context

    # ---- processors and criteria -----------------------------------------------------------------
    def _logits_processors(self, config: GenerationConfig, prompt: _Prompt, eos: list[int] | None,
                           min_length: int, max_length: int, expand: int, custom: list | None,
                           negative_prompt_ids: torch.Tensor | None = None,
                           negative_prompt_attention_mask: torch.Tensor | None = None) -> LogitsProcessorList:
        """transformers' order: guidance, biases, penalties and bans, then the caller's processors, then the
        sampling warpers, the watermark and the final renormalisation."""
        processors = LogitsProcessorList()
        n_ids = prompt.input_ids.shape[1]
        if config.guidance_scale is not None and config.guidance_scale != 1:
            processors.append(UnbatchedClassifierFreeGuidanceLogitsProcessor(
                config.guidance_scale, self, negative_prompt_ids, negative_prompt_attention_mask, config.use_cache))
        if config.sequence_bias is not None:
            processors.append(SequenceBiasLogitsProcessor(config.sequence_bias))
        if config.encoder_repetition_penalty != 1.0:
            if n_ids > 0:
                processors.append(EncoderRepetitionPenaltyLogitsProcessor(config.encoder_repetition_penalty,
                                                                          prompt.input_ids))
            else:
                warnings.warn("encoder_repetition_penalty needs input_ids (it favours the prompt's tokens); "
                              "ignored for an inputs_embeds-only prompt", UserWarning, stacklevel=4)
        if config.repetition_penalty != 1.0:
            pads = (prompt.attention_mask != 0).int().argmax(dim=1).repeat_interleave(expand)  # (B*n,) left pads
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty, prompt_ignore_length=pads))
        if config.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos))
        if eos is not None and min_length > 0:
            processors.append(MinLengthLogitsProcessor(min_length, eos))
        if eos is not None and config.min_new_tokens:
            processors.append(MinNewTokensLengthLogitsProcessor(n_ids, config.min_new_tokens, eos))
        if config.forced_bos_token_id is not None:
            processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            processors.append(ForcedEOSTokenLogitsProcessor(max_length, config.forced_eos_token_id))
        if config.exponential_decay_length_penalty is not None:
            if eos is None:
                raise ValueError("exponential_decay_length_penalty raises the EOS score: it needs eos_token_id")
            processors.append(ExponentialDecayLengthPenalty(config.exponential_decay_length_penalty, eos, n_ids))
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens))
        if config.begin_suppress_tokens is not None:
            begin = n_ids if (n_ids > 1 or config.forced_bos_token_id is None) else n_ids + 1
            processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin))
        processors = _merge(processors, custom)
        if config.do_sample:
            # Beam sampling keeps at least one non-EOS candidate per beam.
            keep = (len(eos) + 1 if eos is not None else 2) if config.num_beams > 1 else 1
            if config.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_h is not None:
                processors.append(TopHLogitsWarper(config.top_h))
            if config.top_k:
                processors.append(TopKLogitsWarper(config.top_k, min_tokens_to_keep=keep))
            if config.top_p < 1.0:
                processors.append(TopPLogitsWarper(config.top_p, min_tokens_to_keep=keep))
            if config.min_p is not None:
                processors.append(MinPLogitsWarper(config.min_p, min_tokens_to_keep=keep))
            if config.typical_p is not None and config.typical_p < 1.0:
                processors.append(TypicalLogitsWarper(config.typical_p, min_tokens_to_keep=keep))
            if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
                processors.append(EpsilonLogitsWarper(config.epsilon_cutoff, min_tokens_to_keep=keep))
            if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
                processors.append(EtaLogitsWarper(config.eta_cutoff, min_tokens_to_keep=keep))
        if config.watermarking_config is not None:
            text_config = getattr(self.config, "text_config", None) or self.config
            watermark = WatermarkingConfig.from_any(config.watermarking_config)
            processors.append(watermark.construct_processor(text_config.vocab_size, prompt.input_ids.device))
        if config.renormalize_logits:
            processors.append(LogitNormalization())
        return processors

    def _stopping_criteria(self, config: GenerationConfig, max_length: int, eos: list[int] | None,
                           tokenizer: Any, custom: list | None) -> StoppingCriteriaList:
        criteria = StoppingCriteriaList([MaxLengthCriteria(max_length)])
        if config.max_time is not None:
            criteria.append(MaxTimeCriteria(config.max_time))
        if config.stop_strings is not None:
            if tokenizer is None:
                raise ValueError("stop_strings need the tokenizer to read the generated text: pass "
                                 "generate(..., tokenizer=processor.tokenizer)")
            criteria.append(StopStringCriteria(tokenizer, config.stop_strings))
        if eos is not None:
            criteria.append(EosTokenCriteria(eos))
        return _merge(criteria, custom)

    # ---- prefix reuse ----------------------------------------------------------------------------
    def _prefix_reuse(self, prompt: _Prompt, model_kwargs: dict[str, Any], config: GenerationConfig,
                      wanted: bool | None) -> _Reuse | None:
        """Look this call up in the prefix cache, or None when it bypasses the cache (batches, padding,
        embeddings, a given cache or positions, other model inputs)."""
        store = self.prefix_cache
        if not (store.enabled if wanted is None else wanted):
            return None
        ids, mask = prompt.input_ids, prompt.attention_mask
        if (ids.shape[0] != 1 or prompt.inputs_embeds is not None or not config.use_cache
                or any(k not in IMAGE_KWARGS for k in model_kwargs) or not bool((mask == 1).all())
                or not torch.equal(prompt.position_ids.cpu(), torch.arange(ids.shape[1])[None])):
            return None
        store.check_state(tuple((p.data_ptr(), p._version) for p in self.parameters()))
        images = None
        if any(model_kwargs.get(k) is not None for k in ("pixel_values", "pixel_values_videos")):
            settings = [(k, model_kwargs.get(k), getattr(self.config, k, None))
                        for k in IMAGE_KWARGS[len(MEDIA_TENSORS):]]
            images = content_key(type(self).__name__, *(model_kwargs.get(k) for k in MEDIA_TENSORS), settings)
        _, cache = store.lookup(ids[0], images, self._media_tokens())
        return _Reuse(store, images, cache)

    def _media_tokens(self) -> tuple[int, ...]:
        """The placeholder ids whose positions take vision features: <image>, and <video> for video models."""
        return tuple(t for t in (getattr(self.config, "image_token_index", None),
                                 getattr(self.config, "video_token_index", None)) if t is not None)

    def _media(self) -> list[tuple[str, str, int]]:
        """(pixel input, output field, placeholder id) of each kind of media this model reads."""
        kinds = [("pixel_values", "image_outputs", getattr(self.config, "image_token_index", None)),
                 ("pixel_values_videos", "video_outputs", getattr(self.config, "video_token_index", None))]
        return [kind for kind in kinds if kind[2] is not None]

    def _cached_image_inputs(self, inputs: dict[str, Any], reuse: _Reuse, prompt_ids: torch.Tensor) -> dict[str, Any]:
        """The prefill inputs with the images and videos handled: dropped when the reused prefix holds all their
        tokens, or written into `inputs_embeds` from the feature cache (exactly as the model's merge would)."""
        media = [(key, field, token) for key, field, token in self._media() if inputs.get(key) is not None]
        if not media:
            return inputs
        ids = inputs["input_ids"]  # (1, T_suffix)
        no_images = {k: v for k, v in inputs.items() if k not in IMAGE_KWARGS}
        placed = [(ids == token, field) for _, field, token in media]  # each (1, T_suffix)
        if not any(bool(mask.any()) for mask, _ in placed):
            reused = prompt_ids[:, :prompt_ids.shape[1] - ids.shape[1]]  # (1, T_prefix)
            # all media tokens lie in the reused prefix; with none at all, the model reports the mismatch
            return no_images if any(bool((reused == token).any()) for _, _, token in media) else inputs
        embed = self.get_input_embeddings()
        if int(ids.min()) < 0 or int(ids.max()) >= embed.num_embeddings:
            return inputs  # the model reports the bad ids
        embeds = embed(ids)  # (1, T_suffix, H)
        for mask, field in placed:
            features = reuse.store.features.get((reuse.images, field))
            if features is None or int(mask.sum()) != features.shape[0]:
                return inputs  # the model computes the features (and reports a mismatch)
            features = features.to(embeds.device, embeds.dtype)  # (N_tokens, H)
            embeds = embeds.masked_scatter(mask[..., None], features)
        no_images["inputs_embeds"] = embeds
        del no_images["input_ids"]
        return no_images

    def _remember_features(self, reuse: _Reuse | None, inputs: dict[str, Any], outputs: Any) -> None:
        """After a prefill that encoded the images or videos, keep each kind's features (total_tokens, H) by
        content key."""
        if reuse is None or reuse.images is None:
            return
        for key, field, _ in self._media():
            features = merged_features(getattr(outputs, field, None))
            if inputs.get(key) is not None and features is not None:
                reuse.store.features.put((reuse.images, field), features.reshape(-1, features.shape[-1]))

    # ---- the loop --------------------------------------------------------------------------------
    def _decode(self, prompt: _Prompt, model_kwargs: dict[str, Any], config: GenerationConfig,
                processors: LogitsProcessorList, criteria: StoppingCriteriaList, has_eos: bool, pad: int | None,
                streamer: Any, reuse: _Reuse | None = None, new_tokens: int = 1,
                compile: bool | None = None, expand: int = 1) -> torch.LongTensor | GenerateDecoderOnlyOutput:
        """Greedy or sampled decoding. With `expand` > 1 the prefill runs once per prompt, then its cache and
        logits are repeated so each prompt continues as `expand` independent rows."""
        input_ids, mask, positions = prompt.input_ids, prompt.attention_mask, prompt.position_ids
        if bool((mask == 1).all()):
            mask = None  # no padding: plain causal attention, as transformers does
        padding = mask  # (B, T_prompt) or None
        device = self.device
        model_kwargs = {k: _to(v, device) for k, v in model_kwargs.items()}
        B = input_ids.shape[0]
        use_cache = config.use_cache or prompt.inputs_embeds is not None  # embeddings are only fed once
        if expand > 1 and not use_cache:
            raise ValueError("num_return_sequences > 1 needs the KV cache: do not set use_cache=False")
        if expand > 1 and compile:
            raise ValueError("compile=True decodes one sequence per prompt; it cannot be combined with "
                             "num_return_sequences > 1")
        cache, step = self._kv_cache(model_kwargs.pop("cache", None), reuse, use_cache, config, prompt,
                                     new_tokens, compile, dynamic=expand > 1)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.forward).parameters else {}
        want_scores = config.return_dict_in_generate and config.output_scores
        want_logits = config.return_dict_in_generate and config.output_logits
        want_attn = config.return_dict_in_generate and config.output_attentions
        want_hidden = config.return_dict_in_generate and config.output_hidden_states
        if want_attn or want_hidden:
            step = None  # the compiled step returns only logits: decode with forward
        extra = {"output_attentions": True} if want_attn else {}
        extra.update({"output_hidden_states": True} if want_hidden else {})
        scores, raw_logits = ([] if want_scores else None), ([] if want_logits else None)
        attentions, hiddens = ([] if want_attn else None), ([] if want_hidden else None)
        unfinished = torch.ones(B, dtype=torch.long, device=input_ids.device)  # (B,)
        next_positions = positions[:, -1] + 1  # (B,) where the first new token goes

        expanded = False
        if streamer is not None:
            streamer.put(input_ids.cpu())
        try:
            step_inputs = self._prefill_inputs(prompt, cache, model_kwargs)
            if reuse is not None:
                step_inputs = self._cached_image_inputs(step_inputs, reuse, prompt.input_ids)
            while True:
                if step_inputs is not None:  # the prefill, or any step of the eager path
                    outputs = self(**step_inputs, attention_mask=_to(mask, device), use_cache=use_cache,
                                   cache=cache, return_dict=True, **keep, **extra)
                    self._remember_features(reuse, step_inputs, outputs)
                    cache = outputs.cache if use_cache else None
                    logits = outputs.logits[:, -1, :]  # (B, V)
                    layers_attn, layers_hidden = outputs.get("attentions"), outputs.get("hidden_states")
                    del outputs
                    if expand > 1 and not expanded:  # after the prefill: each prompt becomes `expand` rows
                        rows = torch.arange(B, device=device).repeat_interleave(expand)  # (B*n,)
                        cache.reorder_cache(rows)
                        logits = logits.index_select(0, rows)
                        layers_attn = _repeat_rows(layers_attn, expand)
                        layers_hidden = _repeat_rows(layers_hidden, expand)
                        input_ids, positions = input_ids.repeat_interleave(expand, 0), positions.repeat_interleave(
                            expand, 0)
                        mask = mask.repeat_interleave(expand, 0) if mask is not None else None
                        padding = mask
                        next_positions = next_positions.repeat_interleave(expand, 0)
                        B = B * expand
                        unfinished = torch.ones(B, dtype=torch.long, device=input_ids.device)
                        expanded = True
                    if want_attn:
                        attentions.append(layers_attn)
                    if want_hidden:
                        hiddens.append(layers_hidden)
                    if step is not None:  # decode continues in the fixed-shape step
                        step.start(cache, padding, B)
                else:
                    logits = step(_to(next_tokens, device), _to(next_positions, device))  # (B, V)
                    next_positions = next_positions + 1
                logits = logits.to(dtype=torch.float32, device=input_ids.device, copy=True)  # (B, V)
                step_scores = processors(input_ids, logits)  # (B, V)
                if want_scores:
                    scores.append(step_scores)
                if want_logits:
                    raw_logits.append(logits)
                if config.do_sample:
                    probs = torch.softmax(step_scores, dim=-1)  # (B, V)
                    next_tokens = torch.multinomial(probs, num_samples=1).squeeze(1)  # (B,)
                else:
                    next_tokens = torch.argmax(step_scores, dim=-1)  # (B,)
                if has_eos:  # rows that already finished get padding
                    next_tokens = torch.where(unfinished.bool(), next_tokens, pad)  # (B,)
                input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)  # (B, T + 1)
                if streamer is not None:
                    streamer.put(next_tokens.cpu())
                unfinished = unfinished & ~criteria(input_ids, tuple(scores) if scores is not None else None)
                if int(unfinished.max()) == 0:
                    break
                if step is not None:
                    step_inputs = None
                    continue
                # Next step: the new token at the next position; the mask grows by one real slot.
                if mask is not None:
                    mask = torch.cat([mask, mask.new_ones((B, 1))], dim=-1)
                if use_cache:  # only the newest token goes in
                    step_inputs = {"input_ids": _to(next_tokens[:, None], device),
                                   "position_ids": _to(next_positions[:, None], device)}
                    next_positions = next_positions + 1
                    continue
                # Without the cache the whole sequence goes in again (and the images).
                positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)  # (B, T + 1)
                step_inputs = dict(model_kwargs)
                step_inputs.update(input_ids=_to(input_ids, device), position_ids=_to(positions, device))
        finally:
            if streamer is not None:
                streamer.end()

        if reuse is not None:  # the cache covers every token but the last one
            stored = cache.to_dynamic() if isinstance(cache, StaticCache) else cache  # not the reusable buffers
            reuse.store.store(input_ids[0], reuse.images, stored)
        if not config.return_dict_in_generate:
            return input_ids
        return GenerateDecoderOnlyOutput(sequences=input_ids, scores=tuple(scores) if want_scores else None,
                                         logits=tuple(raw_logits) if want_logits else None,
                                         attentions=tuple(attentions) if want_attn else None,
                                         hidden_states=tuple(hiddens) if want_hidden else None, cache=cache)

    # ---- shared by beam search and assisted decoding ----------------------------------------------
    def _prefill_rows(self, prompt: _Prompt, model_kwargs: dict[str, Any], expand: int,
                      extra: dict[str, bool]) -> tuple[torch.Tensor, Any, tuple | None, tuple | None]:
        """Run the prompt (and images) once per prompt in a DynamicCache, then repeat the cache and outputs so
        each prompt becomes `expand` rows (i*n + j). Returns next-token logits (B*n, V) in float32, the cache,
        and the forward's attentions / hidden states (None unless asked for in `extra`)."""
        device = self.device
        model_kwargs = {k: _to(v, device) for k, v in model_kwargs.items()}
        cache = model_kwargs.pop("cache", None)
        if cache is None:
            cache = DynamicCache()
        elif not isinstance(cache, (DynamicCache, StaticCache)):
            cache = DynamicCache.from_legacy_cache(cache)
        mask = None if bool((prompt.attention_mask == 1).all()) else prompt.attention_mask
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(self.forward).parameters else {}
        out = self(**self._prefill_inputs(prompt, cache, model_kwargs), attention_mask=_to(mask, device),
                   use_cache=True, cache=cache, return_dict=True, **keep, **extra)
        cache = out.cache
        rows = torch.arange(prompt.input_ids.shape[0], device=device).repeat_interleave(expand)  # (B*n,)
        if expand > 1:
            cache.reorder_cache(rows)
        logits = out.logits[:, -1].index_select(0, rows)  # (B*n, V)
        logits = logits.to(dtype=torch.float32, device=prompt.input_ids.device, copy=True)
        return logits, cache, _repeat_rows(out.get("attentions"), expand), _repeat_rows(out.get("hidden_states"),
                                                                                        expand)

    # ---- the KV cache and the compiled step ------------------------------------------------------
    def _kv_cache(self, given: Any, reuse: _Reuse | None, use_cache: bool, config: GenerationConfig,
                  prompt: _Prompt, new_tokens: int, compile: bool | None,
                  dynamic: bool = False) -> tuple[DynamicCache | StaticCache | None, DecodeStep | None]:
        """The cache the prefill starts from, and the fixed-shape decode step (None: decode with forward).

        A given DynamicCache (or legacy tuples) is used as it is; a given StaticCache too when it has room,
        else it is copied into a larger one. Otherwise a StaticCache sized for prompt + new tokens (rounded up
        to a bucket when compiled), holding the reused prefix if there is one.
        """
        if not use_cache:
            if compile:
                raise ValueError("compile=True needs the KV cache: do not set use_cache=False")
            return None, None
        prefix = reuse.cache if reuse is not None else None
        given_dynamic = given is not None and not isinstance(given, StaticCache)  # DynamicCache or legacy tuples
        if dynamic or given_dynamic or (given is None and config.cache_implementation == "dynamic"):
            if compile:
                raise ValueError("compile=True needs a static cache (cache_implementation='static'); a "
                                 "DynamicCache changes shape every step")
            return (given if given is not None else prefix if prefix is not None else DynamicCache()), None
        compiled = self._wants_compile(config, compile)
        needed = prompt.length + new_tokens  # positions the cache must hold
        if isinstance(given, StaticCache) and given.max_cache_len >= needed:
            cache = given
        else:
            cache = self._static_cache(bucketed(needed) if compiled else needed, prompt.input_ids.shape[0],
                                       compiled)
            source = given if given is not None else prefix
            if source is not None:
                cache.load(source)
        return cache, (self._decode_step() if compiled else None)

    def _wants_compile(self, config: GenerationConfig, compile: bool | None) -> bool:
        """compile=True/False decides; by default the decode step is compiled on CUDA unless disable_compile."""
        if compile is None:
            return not config.disable_compile and self.device.type == "cuda" and language_model(self) is not None
        if compile and language_model(self) is None:
            raise ValueError(f"compile=True: {type(self).__name__} has no decoder the compiled decode step can drive "
                             "(it needs a Llama/Mistral/Qwen2 language model with non-dynamic RoPE)")
        return bool(compile)

    def _static_cache(self, length: int, batch_size: int, compiled: bool) -> StaticCache:
        """A fresh StaticCache, or (compiled) the previous call's emptied one when it has the same shape, so
        the CUDA graphs recorded on its buffers replay."""
        if not compiled:
            return StaticCache(length)
        key = (length, batch_size, self.dtype, self.device)
        kept = self.__dict__.get("_kept_static_cache")
        if kept is not None and kept[0] == key:
            kept[1].reset()
            return kept[1]
        cache = StaticCache(length)
        self.__dict__["_kept_static_cache"] = (key, cache)  # only the latest: a KV cache can be large
        return cache

    def _decode_step(self) -> DecodeStep:
        """This model's compiled decode step (created, and compiled on first use, once per model)."""
        step = self.__dict__.get("_compiled_decode_step")
        if step is None:
            step = self.__dict__["_compiled_decode_step"] = DecodeStep(language_model(self), compile=True)
        return step

    def _prefill_inputs(self, prompt: _Prompt, cache: DynamicCache | StaticCache | None,
                        model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The first forward's inputs: the whole prompt (minus what a given cache holds) and the model kwargs."""
        device = self.device
        done = cache.get_seq_length() if cache is not None else 0
        inputs = dict(model_kwargs)
        if prompt.inputs_embeds is not None:
            inputs["inputs_embeds"] = _to(prompt.inputs_embeds[:, done:], device)
        else:
            inputs["input_ids"] = _to(prompt.input_ids[:, done:], device)
        inputs["position_ids"] = _to(prompt.position_ids[:, done:], device)
        return inputs


def _given_cache(kwargs: dict[str, Any]) -> Any:
    """Pop the KV cache to continue from: `cache=` (the current name) or `past_key_values=` (deprecated)."""
    cache = kwargs.pop("cache", None)
    if "past_key_values" in kwargs:
        old = kwargs.pop("past_key_values")
        if old is not None:
            warnings.warn("generate(past_key_values=...) is deprecated; pass cache=... instead", FutureWarning,
                          stacklevel=3)
            if cache is not None:
                raise ValueError("pass the KV cache as `cache` or `past_key_values`, not both")
            cache = old
    return cache


def _repeat_rows(layers: tuple | None, n: int) -> tuple | None:
    """Each per-layer tensor (B, ...) of a forward output repeated row by row to (B*n, ...)."""
    return None if layers is None else tuple(t.repeat_interleave(n, dim=0) for t in layers)


def _as_list(token_ids: int | list[int] | None) -> list[int]:
    if token_ids is None:
        return []
    return [token_ids] if isinstance(token_ids, int) else list(token_ids)


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device) if isinstance(value, torch.Tensor) else value


def _merge(defaults: list, custom: list | None) -> Any:
    """The caller's processors/criteria replace built-in ones of the same class; others are appended."""
    if not custom:
        return defaults
    merged = type(defaults)()
    for item in defaults:
        replacement = next((c for c in custom if type(c) is type(item)), None)
        if replacement is not None:
            logger.warning(f"A custom {type(item).__name__} was passed to generate and replaces the built-in one.")
        merged.append(replacement if replacement is not None else item)
    merged.extend(c for c in custom if not any(c is m for m in merged))
    return merged
