"""LLaVA-NeXT with the other published decoders: Mistral (llava-v1.6-mistral-7b) and Qwen2 (llava-next-72b/110b)."""

import pytest
import torch
import transformers
from PIL import Image

from llavakit import AutoModelForImageTextToText, AutoProcessor
from llavakit.models.llama import MistralForCausalLM
from llavakit.models.qwen2 import Qwen2ForCausalLM
from tests import assets

BACKBONES = {
    "mistral": ({"model_type": "mistral", "sliding_window": None, "rope_theta": 1e6}, MistralForCausalLM),
    "qwen2": ({"model_type": "qwen2"}, Qwen2ForCausalLM),
}


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def checkpoint(request, tmp_path_factory, tokenizer_dir):
    overrides, decoder_class = BACKBONES[request.param]
    folder = assets.build_tiny_llava_next(tmp_path_factory.mktemp(f"next-{request.param}"), tokenizer_dir,
                                          seed=5, text_overrides=overrides)
    return folder, decoder_class


def test_logits_and_greedy_tokens_match_transformers(checkpoint, photos):
    folder, decoder_class = checkpoint
    ours = AutoModelForImageTextToText.from_pretrained(folder)
    assert isinstance(ours.language_model, decoder_class)
    theirs = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()

    processor = AutoProcessor.from_pretrained(folder)
    prompts = ["USER: <image>\nWhat is it? ASSISTANT:", "USER: <image>\n<image>\nCompare them. ASSISTANT:"]
    images = [Image.open(photos[n]) for n in ("chelsea", "rocket", "coffee")]
    inputs = processor(images=images, text=prompts, padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, atol=1e-5, rtol=0)
    ours_out = ours.generate(**inputs, max_new_tokens=8, do_sample=False)
    theirs_out = theirs.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(ours_out, theirs_out)
