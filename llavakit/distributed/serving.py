"""The server under tensor parallelism: rank 0's engine schedules, every other rank replays its model work.

Rank 0 runs the HTTP app and the usual Engine, and before each collective step it broadcasts what the step
is: admit this request (prompt, options) or decode the running batch (with the rows cancelled since the
last step). Followers keep the same rows and cache, run the same forward passes (their share of each
layer), and take rank 0's sampled tokens, so every rank makes the same decisions in the same order.
Cancellation is latched per step on rank 0, so a client leaving mid-step cannot make the ranks diverge.
"""

from __future__ import annotations

import threading
from typing import Any

import torch.distributed as dist

from llavakit.distributed.setup import broadcast_object
from llavakit.serving.engine import Engine, Prompt, Sequence


class _Latch:
    """A cancel flag whose visible value changes only at `refresh()` (called by the scheduler between steps)."""

    def __init__(self, event: threading.Event) -> None:
        self.event, self.value = event, event.is_set()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.value

    def refresh(self) -> bool:
        """Latch the current value; True if it just became set."""
        was, self.value = self.value, self.event.is_set()
        return self.value and not was


class _Channel:
    """Rank 0 -> all ranks messages over a gloo group (also when the model's group is nccl)."""

    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo")

    def send(self, message: Any) -> None:
        broadcast_object(message, group=self.group)

    def receive(self) -> Any:
        return broadcast_object(None, group=self.group)


class LeaderEngine(Engine):
    """Rank 0: the ordinary engine, announcing each admission and step to the followers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = _Channel()
        self.ids: dict[int, int] = {}  # id(seq) -> request number shared with the followers
        self.admitted = 0

    def _loop(self) -> None:
        try:
            super()._loop()
        finally:
            self.channel.send(("stop",))

    def _admit(self, seq: Sequence) -> None:
        if not isinstance(seq.cancelled, _Latch):
            seq.cancelled = _Latch(seq.cancelled)
        seq.cancelled.refresh()
        number = self.ids[id(seq)] = self.admitted
        self.admitted += 1
        self.channel.send(("admit", number, seq.prompt, seq.params, seq.max_new_tokens, seq.cancelled.is_set()))
        super()._admit(seq)

    def _step(self) -> None:
        newly = [self.ids[id(s)] for s in self.rows if s.cancelled.refresh()]
        self.channel.send(("step", newly))
        super()._step()
        live = {id(s) for s in self.rows}
        self.ids = {key: n for key, n in self.ids.items() if key in live}

    def _sample(self, seq: Sequence, logits) -> int:
        token = super()._sample(seq, logits)
        self.channel.send(token)
        return token


class FollowerEngine(Engine):
    """Ranks > 0: no server, no thread; `run()` replays rank 0's admissions and steps until it stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel = _Channel()
        self.by_number: dict[int, Sequence] = {}

    def run(self) -> None:
        while True:
            message = self.channel.receive()
            if message[0] == "stop":
                return
            if message[0] == "admit":
                _, number, prompt, params, max_new_tokens, cancelled = message
                seq = Sequence(Prompt(prompt.input_ids, prompt.images), params, lambda event: None, max_new_tokens)
                if cancelled:
                    seq.cancelled.set()
                self.by_number[number] = seq
                self._admit(seq)
            else:
                for number in message[1]:
                    self.by_number[number].cancelled.set()
                self._step()
                live = {id(s) for s in self.rows}
                self.by_number = {n: s for n, s in self.by_number.items() if id(s) in live}

    def _sample(self, seq: Sequence, logits) -> int:
        return self.channel.receive()
