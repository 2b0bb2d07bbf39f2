"""Recipe for the bundled demo model (llavakit/assets/demo-model): a tiny LLaVA trained from scratch with
`llavakit train` on llavakit's synthetic shapes data. Reproduces on 2 CPU cores in well under 30 minutes:

    nice -n 19 python scripts/train_demo.py --work /tmp/demo-build --install
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from llavakit import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from llavakit.cli.main import main as cli
from llavakit.processing.tokenizer import PreTrainedTokenizerFast
from llavakit.training import synthetic

ASSET_DIR = Path(__file__).resolve().parents[1] / "llavakit" / "assets" / "demo-model"
SHIPPED = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "processor_config.json", "preprocessor_config.json", "chat_template.jinja", "special_tokens_map.json")
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]  # ids 0..4


def build_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained (tokenizers library) on the synthetic texts; lower-cases, adds <s>."""
    import json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(synthetic.vocabulary_texts(), trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "padding_side": "left", "model_max_length": 256}, indent=2))
    return PreTrainedTokenizerFast.from_pretrained(folder)


def build_initial_model(folder: Path, seed: int, patch_size: int) -> None:
    """Tokenizer, processor and a seeded random model, saved as a checkpoint folder for `llavakit train`.

    Choices that make the image learnable quickly: the processor maps the white background to 0 (mean 1,
    std 0.5), so an empty cell gives a zero patch embedding and the LayerNorms do not drown the shapes in
    a constant; the tower's position embeddings start large enough to survive next to the patch
    embeddings (at CLIP's 0.02 they stay ~100x smaller, and positions are learned slowly); features come
    from the tower's last layer.
    """
    tokenizer = build_tokenizer(folder)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=64, intermediate_size=256,
                           num_hidden_layers=2, num_attention_heads=4, image_size=synthetic.SIZE,
                           patch_size=patch_size),
        text_config=dict(model_type="llama", vocab_size=-(-len(tokenizer) // 16) * 16, hidden_size=128,
                         intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=3),
        image_token_index=4, pad_token_id=3, vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    with torch.no_grad():  # position embeddings at the patch embeddings' scale
        model.vision_tower.vision_model.embeddings.position_embedding.weight.normal_(0.0, 2.0)
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(size={"shortest_edge": synthetic.SIZE},
                                         crop_size={"height": synthetic.SIZE, "width": synthetic.SIZE},
                                         image_mean=[1.0, 1.0, 1.0], image_std=[0.5, 0.5, 0.5])
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                   chat_template=synthetic.DEMO_TEMPLATE).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/llavakit-demo-build", help="scratch folder for data and checkpoints")
    parser.add_argument("--train-images", type=int, default=16000)
    parser.add_argument("--max-steps", type=int, default=6000, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--patch-size", type=int, default=28, help="28: one patch token per grid cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--install", action="store_true", help=f"copy the trained model into {ASSET_DIR}")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    work = Path(args.work)
    start = time.time()
    train_json = synthetic.write_dataset(work / "data", args.train_images, seed=args.seed, prefix="train")
    eval_json = synthetic.write_dataset(work / "data", 200, seed=args.seed + 1, prefix="eval")
    build_initial_model(work / "init", args.seed, args.patch_size)
    print(f"data and initial model ready in {time.time() - start:.0f}s")
    cli(["train", "--model", str(work / "init"), "--data", str(train_json), "--eval-data", str(eval_json),
         "--image-folder", str(work / "data" / "images"), "--output-dir", str(work / "model"), "--stage", "full",
         "--max-steps", str(args.max_steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
         "--warmup-ratio", "0.03", "--weight-decay", "0.01", "--logging-steps", "50", "--eval-steps", "500",
         "--seed", str(args.seed), "--max-length", "128"])
    print(f"trained in {time.time() - start:.0f}s")

    from llavakit import AutoProcessor

    model = LlavaForConditionalGeneration.from_pretrained(work / "model").eval()
    processor = AutoProcessor.from_pretrained(work / "model")
    acc, misses = synthetic.accuracy(model, processor, n=200)
    print(f"held-out accuracy: {acc:.3f} ({len(misses)} misses); first misses: {misses[:5]}")
    if args.install:
        install(work / "model")


def install(model_dir: Path) -> None:
    """Copy a trained model's files into the package, and write the example image beside them."""
    ASSET_DIR.mkdir(parents=True, exist_ok=True)
    for name in SHIPPED:
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, ASSET_DIR / name)
    synthetic.render(synthetic.EXAMPLE).save(ASSET_DIR.parent / "example.png")
    print(f"installed into {ASSET_DIR} (and the example image {ASSET_DIR.parent / 'example.png'})")


if __name__ == "__main__":
    main()
