"""Find checkpoint files: a local folder, or a Hub repo id downloaded through huggingface_hub.

huggingface_hub honours HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE itself; with HF_HUB_OFFLINE=1 (or
local_files_only=True) a repo id resolves only from the local cache, and a clear error says so.
"""

from __future__ import annotations

import json
import os
from typing import Any


class CheckpointNotFoundError(FileNotFoundError):
    """A file the checkpoint needs is not in the folder, the cache, or the Hub repo."""


def _is_local(path_or_repo_id: str | os.PathLike) -> bool:
    return os.path.isdir(path_or_repo_id)


def resolve_file(path_or_repo_id: str | os.PathLike, filename: str, *, revision: str | None = None,
                 local_files_only: bool = False, cache_dir: str | None = None, token: str | bool | None = None,
                 force_download: bool = False, subfolder: str | None = None,
                 required: bool = True) -> str | None:
    """Return a local path to `filename` of a folder or repo id; None if missing and not `required`."""
    if _is_local(path_or_repo_id):
        path = os.path.join(path_or_repo_id, subfolder or "", filename)
        if os.path.isfile(path):
            return path
        if required:
            raise CheckpointNotFoundError(f"{filename} not found in {os.fspath(path_or_repo_id)}")
        return None

    repo_id = os.fspath(path_or_repo_id)
    if os.sep in repo_id and repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise CheckpointNotFoundError(f"{repo_id} is neither an existing folder nor a Hub repo id (owner/name)")
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return huggingface_hub.hf_hub_download(
            repo_id, filename, subfolder=subfolder, revision=revision, cache_dir=cache_dir, token=token,
            local_files_only=local_files_only, force_download=force_download,
        )
    except LocalEntryNotFoundError as err:
        if not required and _in_local_snapshot(repo_id, revision, cache_dir):
            return None  # the repo is cached and simply does not have this optional file
        offline = local_files_only or huggingface_hub.constants.HF_HUB_OFFLINE
        why = ("offline mode is on (HF_HUB_OFFLINE=1 or local_files_only=True) and it is not in the cache"
               if offline else "it is not in the cache and the Hub could not be reached")
        raise CheckpointNotFoundError(f"cannot get {filename} of {repo_id}: {why}") from err
    except EntryNotFoundError:  # after LocalEntryNotFoundError, its subclass
        if required:
            raise CheckpointNotFoundError(f"{filename} not found in Hub repo {repo_id}") from None
        return None
    except RepositoryNotFoundError as err:
        raise CheckpointNotFoundError(f"{repo_id} is not a local folder and not a Hub repo id that exists") from err


def _in_local_snapshot(repo_id: str, revision: str | None, cache_dir: str | None) -> bool:
    import huggingface_hub

    try:
        huggingface_hub.snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True,
                                          allow_patterns=["config.json"])
        return True
    except Exception:
        return False


def resolve_optional(path_or_repo_id: str | os.PathLike, filename: str, **hub_kwargs: Any) -> str | None:
    """Like resolve_file, but None when the file does not exist."""
    return resolve_file(path_or_repo_id, filename, required=False, **hub_kwargs)


def read_json(path: str) -> dict[str, Any]:
    """A JSON file's content; a clear error naming the file when it is not valid JSON."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
