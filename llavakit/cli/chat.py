"""`llavakit chat MODEL`: a terminal chat that keeps the conversation, with images added by /image PATH.

Commands: /image PATH (attach to your next message), /reset (forget the conversation), /quit.
Answers stream to the terminal as they are generated.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

HELP = "Commands: /image PATH adds an image to your next message, /reset starts over, /quit leaves."


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Chat with a LLaVA model in the terminal. " + HELP)
    p.add_argument("model", help="checkpoint folder or Hub repo id")
    p.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--chat-template", default=None, help="a built-in template name or a .jinja file")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default=None)
    p.set_defaults(run=run)


class _Echo:
    """A streamer that writes each piece of finalized text straight to the terminal."""

    def __init__(self, tokenizer: Any, out: TextIO) -> None:
        from llavakit.generation.streamer import TextStreamer

        self.out, self.started = out, False
        self.inner = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.inner.on_finalized_text = self.write

    def write(self, text: str, stream_end: bool = False) -> None:
        if not self.started:
            text, self.started = text.lstrip(), bool(text.strip())
        self.out.write(text)
        self.out.flush()

    def put(self, value: Any) -> None:
        self.inner.put(value)

    def end(self) -> None:
        self.inner.end()


class ChatSession:
    """The conversation so far, and the images waiting for the next user message."""

    def __init__(self, model: Any, processor: Any, options: dict[str, Any], chat_template: str | None = None):
        self.model, self.processor, self.options, self.template = model, processor, options, chat_template
        self.messages: list[dict[str, Any]] = []
        self.images: list[Any] = []  # every image in the conversation, in order
        self.pending: list[Any] = []  # images for the next message

    def add_image(self, path: str) -> None:
        from llavakit.processing.image import load_image

        self.pending.append(load_image(path))

    def reset(self) -> None:
        self.messages, self.images, self.pending = [], [], []

    def ask(self, text: str, out: TextIO) -> str:
        """Add the user's message, stream the answer to `out`, keep it in the history and return it."""
        content = [{"type": "image"} for _ in self.pending] + [{"type": "text", "text": text}]
        messages = self.messages + [{"role": "user", "content": content}]
        images = self.images + self.pending
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, chat_template=self.template)
        bos = self.processor.tokenizer.bos_token
        inputs = self.processor(images=images or None, text=prompt, return_tensors="pt",
                                add_special_tokens=not (bos and prompt.startswith(bos)))
        inputs = inputs.to(self.model.device, self.model.dtype)
        output = self.model.generate(**inputs, **self.options, streamer=_Echo(self.processor.tokenizer, out))
        out.write("\n")
        answer = self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.images, self.pending = images, []
        return answer


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """Read lines until EOF or /quit; commands start with '/', anything else is a message."""
    stdout.write(HELP + "\n")
    while True:
        stdout.write("you> ")
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        line = line.strip()
        if not line:
            continue
        command, _, arg = line.partition(" ")
        try:
            if command == "/quit":
                return
            elif command == "/reset":
                session.reset()
                stdout.write("(conversation cleared)\n")
            elif command == "/image":
                session.add_image(arg.strip())
                stdout.write(f"(image added: {arg.strip()}; it goes with your next message)\n")
            elif command.startswith("/"):
                stdout.write(f"unknown command {command}. {HELP}\n")
            else:
                stdout.write("assistant> ")
                session.ask(line, stdout)
        except (ValueError, FileNotFoundError, TypeError) as err:
            stdout.write(f"error: {err}\n")


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor
    from llavakit.cli.generate import _read_template

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=args.dtype, device_map=device).eval()
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.temperature > 0}
    if args.temperature > 0:
        options.update(temperature=args.temperature, top_p=args.top_p)
    session = ChatSession(model, processor, options, _read_template(args.chat_template))
    for path in args.image:
        session.add_image(path)
    chat_loop(session, sys.stdin, sys.stdout)
    return 0
