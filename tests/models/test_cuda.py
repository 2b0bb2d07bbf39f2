"""The same parity on a GPU, in bf16 and fp32 (skipped where CUDA is not available, as in CI)."""

import pytest
import torch
import transformers
from PIL import Image

import llavakit
from tests.reference import hf_processor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_generate_on_cuda_matches_transformers(tiny_llava_dir, photos, dtype):
    processor = hf_processor(tiny_llava_dir)
    prompts = ["USER: <image>\nWhat is this? ASSISTANT:", "USER: <image>\nDescribe the photo in a sentence. ASSISTANT:"]
    images = [Image.open(photos["chelsea"]), Image.open(photos["rocket"])]
    inputs = processor(images=images, text=prompts, padding=True, padding_side="left",
                       return_tensors="pt").to("cuda", dtype)
    theirs = transformers.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=dtype).to("cuda")
    ours = llavakit.LlavaForConditionalGeneration.from_pretrained(tiny_llava_dir, dtype=dtype, device_map="cuda")
    assert ours.device.type == "cuda" and ours.dtype == dtype
    with torch.no_grad():
        ours_logits = ours(**inputs).logits
        theirs_logits = theirs(**inputs).logits
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(ours_logits, theirs_logits, atol=tolerance, rtol=tolerance)
    ours_out = ours.generate(**inputs, max_new_tokens=12, do_sample=False)
    theirs_out = theirs.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert torch.equal(ours_out, theirs_out)
