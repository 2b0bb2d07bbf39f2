"""Structured output: constrain decoding to a JSON schema, a regex, a grammar or a list of choices.

The constraint is compiled by llguidance (a Rust constrained-decoding library) against the model's own
`tokenizers` vocabulary: it reads the tokenizer.json text directly, so SentencePiece byte-fallback (Llama,
Mistral, Vicuna) and GPT-2 byte-level (Qwen2, Llama 3) vocabularies work alike and transformers is never
imported. After each token, the matcher gives the set of tokens that keep the output inside the
constraint; everything else gets -inf before sampling, and end-of-sequence is only allowed where the
output is complete.

Two users: the server's continuous-batching engine (one `GrammarMatcher` per request, so constrained and
free requests share a batch) and `generate` (`JSONSchemaLogitsProcessor`, a transformers-style logits
processor).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import numpy as np
import torch

# The kinds a constraint can be given in: the OpenAI response formats plus vLLM's guided-decoding options.
KINDS = ("json_schema", "json_object", "regex", "grammar", "choice")


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What the output must match: `kind` is one of KINDS, `spec` the schema (dict), pattern, grammar or choices."""

    kind: str
    spec: Any = None

    def grammar(self) -> str:
        """The llguidance grammar text for this constraint (raises ValueError on a malformed spec)."""
        import llguidance

        options = {"whitespace_flexible": False}  # compact JSON: a weak model cannot pad it with endless spaces
        if self.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=options)
        if self.kind == "json_schema":
            if not isinstance(self.spec, dict):
                raise ValueError(f"a JSON schema must be an object, got {type(self.spec).__name__}")
            return llguidance.LLMatcher.grammar_from_json_schema(self.spec, defaults=options)
        if self.kind == "regex":
            return llguidance.grammar_from("regex", self.spec)
        if self.kind == "grammar":  # Lark, or llama.cpp's GBNF (converted by llguidance)
            return llguidance.grammar_from("grammar", self.spec)
        if self.kind == "choice":
            if not isinstance(self.spec, list) or not self.spec or not all(isinstance(c, str) for c in self.spec):
                raise ValueError("choices must be a non-empty list of strings")
            return llguidance.grammar_from("choice", self.spec)
        raise ValueError(f"unknown constraint kind {self.kind!r}; expected one of {', '.join(KINDS)}")


class Vocabulary:
    """The llguidance view of a tokenizer: built once per (tokenizer, logits width, EOS ids) and shared."""

    _cache: dict[tuple[int, int, tuple[int, ...]], Any] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> Any:
        """An llguidance LLTokenizer for `tokenizer` (ours or any with a `backend_tokenizer`) and V logits."""
        import llguidance

        key = (id(tokenizer), vocab_size, tuple(eos_token_ids))
        with cls._lock:
            if key not in cls._cache:
                backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # a tokenizers.Tokenizer
                if not hasattr(backend, "to_str"):
                    raise ValueError("structured output needs a fast tokenizer (a tokenizers.Tokenizer backend)")
                cls._cache[key] = llguidance.LLTokenizer(backend.to_str(), n_vocab=vocab_size,
                                                         eos_token=list(eos_token_ids))
            return cls._cache[key]


class GrammarMatcher:
    """Tracks one output against a constraint: which tokens may come next, and whether it is complete."""

    def __init__(self, constraint: Constraint, tokenizer: Any, vocab_size: int, eos_token_ids: list[int]) -> None:
        import llguidance

        if not eos_token_ids:
            raise ValueError("structured output needs the model's end-of-sequence token id")
        self.vocab_size = vocab_size
        vocabulary = Vocabulary.get(tokenizer, vocab_size, eos_token_ids)
        grammar = constraint.grammar()
        problem = llguidance.LLMatcher.validate_grammar(grammar, vocabulary)
        if problem:
            raise ValueError(f"invalid {constraint.kind.replace('_', ' ')}: {_first_line(problem)}")
        self.matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
        self._check()
        if not self.allowed().any():
            raise ValueError(f"the {constraint.kind.replace('_', ' ')} cannot be satisfied: no token can start it")

    def allowed(self) -> torch.Tensor:
        """(V,) bool: the tokens that may come next."""
        packed = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(packed, bitorder="little")[:self.vocab_size]  # (V,)
        self._check()
        return torch.from_numpy(bits.astype(bool))

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """scores (..., V) with every token the constraint forbids set to -inf (a new tensor)."""
        allowed = self.allowed().to(scores.device)  # (V,)
        if not allowed.any():
            raise ValueError("the constraint allows no next token (it cannot be satisfied from here)")
        return scores.masked_fill(~allowed, float("-inf"))

    def advance(self, token: int) -> None:
        """Record the sampled token (it must be one `allowed` gave)."""
        if not self.matcher.consume_token(token):
            raise ValueError(f"token {token} does not fit the constraint: {_first_line(self.matcher.get_error())}")

    @property
    def finished(self) -> bool:
        """Whether the constraint is complete and only end-of-sequence may follow."""
        return self.matcher.is_stopped()

    def _check(self) -> None:
        if self.matcher.is_error():
            raise ValueError(f"the constraint cannot be satisfied: {_first_line(self.matcher.get_error())}")


class JSONSchemaLogitsProcessor:
    """A logits processor for `generate`: every row's new tokens follow `schema` (or any Constraint).

    Usage: `model.generate(**inputs, logits_processor=[JSONSchemaLogitsProcessor(schema, processor.tokenizer,
    model)])`. The first call sees the prompt length; later calls feed each row's newest token to its
    matcher. A row that finished (its EOS was emitted, and generate pads it) is left alone.
    """

    def __init__(self, schema: dict | str | Constraint, tokenizer: Any, model: Any = None, *,
                 vocab_size: int | None = None, eos_token_id: int | list[int] | None = None) -> None:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except ValueError as err:
                raise ValueError(f"the JSON schema is not valid JSON: {err}") from None
        self.constraint = schema if isinstance(schema, Constraint) else Constraint("json_schema", schema)
        self.tokenizer = tokenizer
        config = getattr(model, "config", None)
        text_config = getattr(config, "text_config", config)
        self.vocab_size = vocab_size or getattr(text_config, "vocab_size", None) or len(tokenizer)
        if eos_token_id is None:
            eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            eos_token_id = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
        self.eos = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
        GrammarMatcher(self.constraint, tokenizer, self.vocab_size, self.eos)  # refuse a bad schema right away
        self.matchers: list[GrammarMatcher] = []
        self.done: list[bool] = []
        self.seen = -1  # the sequence length at the previous call

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] != self.seen + 1 or input_ids.shape[0] != len(self.matchers):  # a new generate call
            self.matchers = [GrammarMatcher(self.constraint, self.tokenizer, self.vocab_size, self.eos)
                             for _ in range(input_ids.shape[0])]
            self.done = [False] * input_ids.shape[0]
        else:
            newest = input_ids[:, -1].tolist()
            for row, token in enumerate(newest):
                if not self.done[row]:
                    self.done[row] = token in self.eos
                    if not self.done[row]:
                        self.matchers[row].advance(token)
        self.seen = input_ids.shape[1]
        V = scores.shape[-1]
        rows = []
        for row, matcher in enumerate(self.matchers):  # (V,) per row; finished rows keep their scores
            rows.append(scores[row] if self.done[row] else matcher.mask(scores[row, :self.vocab_size].float())
                        .to(scores.dtype))
        out = torch.stack([torch.nn.functional.pad(r, (0, V - r.shape[0]), value=float("-inf")) for r in rows])
        return out  # (B, V)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "unknown error"
