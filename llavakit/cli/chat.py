"""`llavakit chat --model MODEL`: a terminal chat that keeps the conversation, with images added by /image PATH.

Commands: /image PATH (attach to your next message), /reset (forget the conversation), /help, /quit.
Answers stream to the terminal as they are generated; on a terminal the prompt has line editing and history
(readline), Ctrl-C stops an answer early and, at the prompt, leaves.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, TextIO

from llavakit.cli.common import add_model_argument, model_path, read_template

HELP = ("Commands: /image PATH adds an image to your next message, /reset starts over, /help shows this, "
        "/quit (or Ctrl-D) leaves.")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Chat with a LLaVA model in the terminal. " + HELP)
    add_model_argument(p, positional=True)
    p.add_argument("--image", action="append", default=[], help="image for the first message (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="most tokens per answer (fewer when the conversation leaves less room in the context)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy decoding")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: keep the likeliest tokens up to this mass")
    p.add_argument("--chat-template", default=None, help="a built-in template name or a .jinja file")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
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

    def room(self, prompt_tokens: int) -> int:
        """max_new_tokens, clamped to what the model's context leaves after the prompt (as the server does)."""
        text_config = getattr(self.model.config, "text_config", self.model.config)
        context = getattr(text_config, "max_position_embeddings", None)
        wanted = self.options.get("max_new_tokens", 256)
        if context is None:
            return wanted
        if prompt_tokens >= context:
            raise ValueError(f"the conversation is {prompt_tokens} tokens, which fills the model's context of "
                             f"{context}; /reset to start over")
        return min(wanted, context - prompt_tokens)

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
        options = {**self.options, "max_new_tokens": self.room(inputs["input_ids"].shape[1])}
        output = self.model.generate(**inputs, **options, streamer=_Echo(self.processor.tokenizer, out))
        out.write("\n")
        answer = self.processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        self.messages = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        self.images, self.pending = images, []
        return answer


def _reader(stdin: TextIO, stdout: TextIO) -> Callable[[str], str]:
    """input() with readline's line editing and history on a terminal; plain reads from a pipe or a file."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        try:
            import readline  # noqa: F401 (importing it gives input() editing and history)
        except ImportError:  # Windows without pyreadline
            pass

        def read(prompt: str) -> str:
            try:
                return input(prompt) + "\n"
            except EOFError:
                return ""
        return read

    def read_stream(prompt: str) -> str:
        stdout.write(prompt)
        stdout.flush()
        return stdin.readline()
    return read_stream


def chat_loop(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """Read lines until EOF, /quit or Ctrl-C at the prompt; commands start with '/', anything else is a message.
    Ctrl-C while an answer streams stops that answer and keeps the conversation as it was before it."""
    stdout.write(HELP + "\n")
    read = _reader(stdin, stdout)
    while True:
        try:
            line = read("you> ")
        except KeyboardInterrupt:
            line = ""
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
            elif command == "/help":
                stdout.write(HELP + "\n")
            elif command.startswith("/"):
                stdout.write(f"unknown command {command}. {HELP}\n")
            else:
                stdout.write("assistant> ")
                session.ask(line, stdout)
        except (ValueError, FileNotFoundError, TypeError) as err:
            stdout.write(f"error: {err}\n")
        except KeyboardInterrupt:
            stdout.write("\n(answer stopped)\n")


def run(args: argparse.Namespace) -> int:
    import torch

    from llavakit import AutoModelForImageTextToText, AutoProcessor

    template = read_template(args.chat_template)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    path = model_path(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=args.dtype, device_map=device).eval()
    options: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "do_sample": args.temperature > 0}
    if args.temperature > 0:
        options.update(temperature=args.temperature, top_p=args.top_p)
    session = ChatSession(model, processor, options, template)
    for path in args.image:
        session.add_image(path)
    chat_loop(session, sys.stdin, sys.stdout)
    return 0
