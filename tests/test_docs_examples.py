"""The transformers LLaVA, LLaVA-NeXT and ViP-LLaVA documentation examples, run twice: once as written,
once with only the import changed to llavakit. Both runs must give the same thing (text, token ids, loss)."""

import pytest

SINGLE_IMAGE = """
import torch
from PIL import Image
from {lib} import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained(model_id, torch_dtype=torch.float32, low_cpu_mem_usage=True)
processor = AutoProcessor.from_pretrained(model_id)

conversation = [
    {{"role": "user", "content": [{{"type": "text", "text": "What are these?"}}, {{"type": "image"}}]}},
]
prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
raw_image = Image.open(image_files[0])
inputs = processor(images=raw_image, text=prompt, return_tensors="pt").to("cpu", torch.float32)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
result = [prompt, output.tolist(), processor.decode(output[0][2:], skip_special_tokens=True)]
"""

CHAT_TEMPLATE_TOKENIZE = """
from {lib} import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained(model_id)
processor = AutoProcessor.from_pretrained(model_id)
messages = [
    {{"role": "user", "content": [{{"type": "image", "url": image_files[1]}},
                                 {{"type": "text", "text": "What is shown in this image?"}}]}},
    {{"role": "assistant", "content": [{{"type": "text", "text": "A cup of coffee."}}]}},
    {{"role": "user", "content": [{{"type": "text", "text": "Is it hot?"}}]}},
]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
generate_ids = model.generate(**inputs, max_new_tokens=15)
result = [inputs["input_ids"].tolist(), processor.batch_decode(generate_ids, skip_special_tokens=True)]
"""

BATCHED_LEFT_PADDING = """
from PIL import Image
from {lib} import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained(model_id)
processor = AutoProcessor.from_pretrained(model_id)
processor.tokenizer.padding_side = "left"
prompts = [
    "USER: <image>\\nWhat are the things I should be cautious about when I visit this place? ASSISTANT:",
    "USER: <image>\\nWhat is this? ASSISTANT:",
    "USER: <image>\\n<image>\\nWhat is the difference between these two images? ASSISTANT:",
]
images = [Image.open(path) for path in image_files[:4]]
inputs = processor(images=images, text=prompts, padding=True, return_tensors="pt")
generate_ids = model.generate(**inputs, max_new_tokens=20)
result = [inputs["attention_mask"].tolist(),
          processor.batch_decode(generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)]
"""

LABELS_AND_LOSS = """
import torch
from PIL import Image
from {lib} import AutoProcessor, LlavaForConditionalGeneration

model = LlavaForConditionalGeneration.from_pretrained(model_id)
processor = AutoProcessor.from_pretrained(model_id)
texts = ["USER: <image>\\nWhat is this? ASSISTANT: A cat on a sofa.",
         "USER: <image>\\nDescribe it. ASSISTANT: A rocket on the launch pad."]
images = [Image.open(image_files[0]), Image.open(image_files[2])]
batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
labels = batch["input_ids"].clone()
labels[batch["attention_mask"] == 0] = -100
labels[labels == model.config.image_token_index] = -100
outputs = model(**batch, labels=labels)
# 3 decimals: as written, transformers' AutoProcessor picks its torchvision backend when torchvision is installed,
# whose resize differs from Pillow's (llavakit's) by a grey level here and there (~1e-5 on this loss)
result = [round(outputs.loss.item(), 3), tuple(outputs.logits.shape)]
"""

NEXT_BATCHED_MULTI_IMAGE = """
import torch
from PIL import Image
from {lib} import LlavaNextProcessor, LlavaNextForConditionalGeneration

processor = LlavaNextProcessor.from_pretrained(model_id)
processor.tokenizer.padding_side = "left"
model = LlavaNextForConditionalGeneration.from_pretrained(model_id, torch_dtype=torch.float32, low_cpu_mem_usage=True)
image_stop, image_cats, image_snowman = (Image.open(path) for path in image_files[:3])
conversation_1 = [
    {{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown in this image?"}}]}},
    {{"role": "assistant", "content": [{{"type": "text", "text": "There is a red stop sign in the image."}}]}},
    {{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What about this image? How many cats?"}}]}},
]
conversation_2 = [
    {{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is shown in this image?"}}]}},
]
prompt_1 = processor.apply_chat_template(conversation_1, add_generation_prompt=True)
prompt_2 = processor.apply_chat_template(conversation_2, add_generation_prompt=True)
inputs = processor(images=[image_stop, image_cats, image_snowman], text=[prompt_1, prompt_2], padding=True,
                   return_tensors="pt")
generate_ids = model.generate(**inputs, max_new_tokens=20)
result = [inputs["image_sizes"].tolist(), inputs["input_ids"].tolist(),
          processor.batch_decode(generate_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)]
"""

VIP_SINGLE_IMAGE = """
import torch
from PIL import Image
from {lib} import AutoProcessor, VipLlavaForConditionalGeneration

model = VipLlavaForConditionalGeneration.from_pretrained(model_id, torch_dtype=torch.float32)
processor = AutoProcessor.from_pretrained(model_id)
prompt = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.###Human: <image>\\n{{}}###Assistant:")
prompt = prompt.format("Can you please describe this image?")
image = Image.open(image_files[3])
inputs = processor(text=prompt, images=image, return_tensors="pt").to("cpu", torch.float32)
generate_ids = model.generate(**inputs, max_new_tokens=20)
result = processor.decode(generate_ids[0][len(inputs["input_ids"][0]):], skip_special_tokens=True)
"""

# example -> (code, the checkpoint fixtures it runs on)
EXAMPLES = {
    "single_image": (SINGLE_IMAGE, ["tiny_llava_dir", "tiny_llava_hub_dir"]),
    "chat_template_tokenize": (CHAT_TEMPLATE_TOKENIZE, ["tiny_llava_dir", "tiny_llava_hub_dir"]),
    "batched_left_padding": (BATCHED_LEFT_PADDING, ["tiny_llava_dir", "tiny_llava_hub_dir"]),
    "labels_and_loss": (LABELS_AND_LOSS, ["tiny_llava_dir", "tiny_llava_hub_dir"]),
    "next_batched_multi_image": (NEXT_BATCHED_MULTI_IMAGE, ["tiny_llava_next_dir"]),
    "vip_single_image": (VIP_SINGLE_IMAGE, ["tiny_vipllava_dir"]),
}
CASES = [(name, fixture) for name, (_, fixtures) in EXAMPLES.items() for fixture in fixtures]


def run_example(code: str, lib: str, model_id: str, image_files: list[str]):
    namespace = {"model_id": model_id, "image_files": image_files}
    exec(code.format(lib=lib), namespace)
    return namespace["result"]


@pytest.mark.parametrize("name, checkpoint", CASES)
def test_doc_example_gives_transformers_output(name, checkpoint, request, photos):
    model_id = str(request.getfixturevalue(checkpoint))
    image_files = [str(photos[n]) for n in ("chelsea", "coffee", "rocket", "astronaut")]
    code = EXAMPLES[name][0]
    expected = run_example(code, "transformers", model_id, image_files)
    assert run_example(code, "llavakit", model_id, image_files) == expected
