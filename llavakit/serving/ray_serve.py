"""Scale-out serving on Ray Serve: N model replicas behind one OpenAI endpoint.

    llavakit serve MODEL --ray ADDRESS --num-replicas N

Each replica is its own one-replica Ray Serve deployment holding the model, an Engine and the ordinary app
(app.py), so validation, errors, streaming and continuous batching are exactly those of a single server.
One router deployment takes the HTTP traffic and forwards each request, as raw ASGI messages, to a replica
it picks itself:
- a request with images goes to the replica chosen by rendezvous hashing of its first image URL (a data URL
  holds the bytes), so repeats of an image find its features in that replica's feature cache;
- a request without images goes to the replica with the fewest requests in flight;
- a request with an `x-llavakit-replica: I` header goes to replica I (to read one replica's /metrics).
Picking the replica in the router (instead of Ray's own power-of-two choice) is what makes the affinity
cheap: a hash of a string the request already carries, no lookup across machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, AsyncIterator

REPLICA_HEADER = "x-llavakit-replica"  # which replica answered (the router adds it)


def affinity_key(body: bytes) -> str | None:
    """The first image URL of a chat request (its routing key), or None when it has no image."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    messages = request.get("messages") if isinstance(request, dict) else None
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, dict) else url
                if isinstance(url, str) and url:
                    return url
    return None


def pick_replica(key: str | None, in_flight: list[int]) -> int:
    """Rendezvous hashing on the key (stable when replicas are added), else the least busy replica."""
    if key is None:
        return min(range(len(in_flight)), key=lambda i: in_flight[i])
    digest = hashlib.sha256(key.encode()).digest()
    return max(range(len(in_flight)), key=lambda i: hashlib.sha256(digest + bytes([i % 256, i // 256])).digest())


class Replica:
    """One model replica: the ordinary app around its own engine, driven through ASGI calls."""

    def __init__(self, index: int, options: dict[str, Any]) -> None:
        import argparse

        from llavakit.cli.serve import build_app

        self.index = index
        self.app = build_app(argparse.Namespace(**options))
        self.app.state.engine.start()  # no ASGI lifespan here: start the scheduler ourselves

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        """Run one HTTP request through the app; yield its ASGI response messages as they come."""
        sent: asyncio.Queue = asyncio.Queue()
        delivered = False
        disconnected = asyncio.Event()

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()  # the app waits here while it streams; the router going away ends it
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            await sent.put(message)

        task = asyncio.create_task(self.app(scope, receive, send))
        task.add_done_callback(lambda _: sent.put_nowait(None))
        try:
            while (message := await sent.get()) is not None:
                yield message
            await task  # surface an exception from the app
        finally:  # the caller went away (or we are done): let the app see the disconnect and stop
            disconnected.set()
            if not task.done():
                await asyncio.wait([task], timeout=5)


class Router:
    """The front deployment: every route is forwarded to a replica it picks (see the module docstring)."""

    def __init__(self, replicas: list[Any]) -> None:
        self.replicas = replicas
        self.in_flight = [0] * len(replicas)

    def __serve_build_asgi_app__(self) -> Any:
        """The router's own ASGI app, one catch-all route (built in the replica: nothing about it is pickled)."""
        from starlette.applications import Starlette
        from starlette.routing import Route

        return Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST"])])

    async def forward(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        body = await request.body()
        pinned = request.headers.get(REPLICA_HEADER, "")
        if pinned.isdigit() and int(pinned) < len(self.replicas):
            index = int(pinned)
        else:
            index = pick_replica(affinity_key(body) if request.method == "POST" else None, self.in_flight)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": "http", "path": request.url.path, "raw_path": request.url.path.encode(),
                 "query_string": request.url.query.encode(), "root_path": "",
                 "headers": [(k.encode(), v.encode()) for k, v in request.headers.items()],
                 "client": None, "server": None}
        self.in_flight[index] += 1
        stream = self.replicas[index].options(stream=True).forward.remote(scope, body)
        try:
            start = await stream.__anext__()  # http.response.start: the status and headers
        except BaseException:
            self.in_flight[index] -= 1
            raise
        headers = {k.decode(): v.decode() for k, v in start["headers"] if k.decode().lower() != "content-length"}
        headers[REPLICA_HEADER] = str(index)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for message in stream:
                    if message.get("body"):
                        yield message["body"]
            finally:
                self.in_flight[index] -= 1
                stream.cancel()  # a no-op when finished; ends the replica's request when the client left

        return StreamingResponse(chunks(), status_code=start["status"], headers=headers,
                                 media_type=headers.pop("content-type", None))


def build_application(options: dict[str, Any], num_replicas: int, cpus_per_replica: float = 1.0,
                      gpus_per_replica: float = 0.0) -> Any:
    """The Ray Serve application: `num_replicas` one-replica model deployments and the router in front."""
    from ray import serve

    if num_replicas < 1:
        raise ValueError(f"--num-replicas must be at least 1, got {num_replicas}")
    router = serve.deployment(serve.ingress()(Router), name="llavakit-router", ray_actor_options={"num_cpus": 0})
    replica = serve.deployment(Replica, ray_actor_options={"num_cpus": cpus_per_replica,
                                                           "num_gpus": gpus_per_replica})
    replicas = [replica.options(name=f"llavakit-replica-{i}").bind(i, options) for i in range(num_replicas)]
    return router.bind(replicas)


def serve_on_ray(options: dict[str, Any], address: str | None, num_replicas: int, host: str, port: int,
                 cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0) -> None:
    """Serve on the Ray cluster at `address` ('local' starts one) until interrupted."""
    import time

    import ray
    from ray import serve

    from llavakit.batch.ray_runner import connect

    connect(address or None)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(build_application(options, num_replicas, cpus_per_replica, gpus_per_replica), name="llavakit",
                  route_prefix="/")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
        ray.shutdown()
