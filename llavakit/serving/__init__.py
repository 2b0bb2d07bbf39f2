"""The OpenAI-compatible server (`llavakit serve`): request checks, media fetching, continuous batching, routes."""
