"""The built-in demo checkpoint: a tiny LLaVA-1.5-architecture model that needs no download.

The package ships one trained by scripts/train_demo.py on llavakit's synthetic shapes data
(llavakit/assets/demo-model). Without it (e.g. a trimmed install) a seeded RANDOM tiny model is written
once into the user's cache: its words are random, and the CLI says so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# synthetic.EXAMPLE: red circle top left, blue square (in a red box) top right, green triangle bottom right
EXAMPLE_IMAGE = str(Path(__file__).parent / "assets" / "example.png")
NOTICE = ("[llavakit demo] built-in tiny model with RANDOM weights: the words below are random, "
          "not an answer. Pass --model PATH_OR_REPO_ID to run a real checkpoint.")
VERSION = "random-v1"

# The demo tokenizer's whole vocabulary: special tokens, chat roles, then plain words.
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = ("USER: ASSISTANT: a an the is are in on of and with at to this image picture shows there what which "
         "red green blue yellow orange purple black white grey circle square triangle star shape shapes "
         "left right top bottom middle center corner one two three four many small large big above below "
         "next inside outside near far it I see can yes no . , ?").split()


def cache_dir() -> Path:
    root = os.environ.get("LLAVAKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "llavakit")
    return Path(root) / f"demo-{VERSION}"


TRAINED_DIR = Path(__file__).parent / "assets" / "demo-model"  # trained by scripts/train_demo.py, when shipped


def has_trained_model() -> bool:
    return (TRAINED_DIR / "model.safetensors").exists()


def demo_checkpoint() -> str:
    """The shipped trained demo model if present; else the RANDOM one, built on first use (well under a second)."""
    if has_trained_model():
        return str(TRAINED_DIR)
    folder = cache_dir()
    if not (folder / "model.safetensors").exists():
        build_demo_checkpoint(folder)
    return str(folder)


def build_tokenizer_files(folder: Path) -> None:
    """A word-level tokenizer (tokenizers library) that adds BOS, with the ids listed in SPECIAL + WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    tokenizer.add_special_tokens(SPECIAL)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "pad_token": "<pad>", "padding_side": "left", "model_max_length": 512,
    }, indent=2))


def build_demo_checkpoint(folder: str | os.PathLike) -> Path:
    """Write the random demo model, its processor and tokenizer into `folder`."""
    import torch

    from llavakit import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from llavakit.processing.templates import TEMPLATES
    from llavakit.processing.tokenizer import PreTrainedTokenizerFast

    folder = Path(folder)
    build_tokenizer_files(folder)
    vocab_size = len(SPECIAL) + len(WORDS)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, image_size=56, patch_size=14),
        text_config=dict(model_type="llama", vocab_size=-(-vocab_size // 64) * 64, hidden_size=64,
                         intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, pad_token_id=3),
        image_token_index=4, pad_token_id=3,
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(folder)

    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=14,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=TEMPLATES["llava"])
    processor.save_pretrained(folder)
    return folder
