"""A trained checkpoint to the Hugging Face Hub: config, safetensors, rig mappings, the training
metrics and a model card (`model_card.build_model_card`), optionally tagged so users can pin `org/name@tag`.
`train/publish.py` is its command line."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub

from .hub import CONFIG_NAME, WEIGHTS_NAME, CheckpointNotFoundError, parse_repo_id, validate_checkpoint
from .model_card import build_model_card

logger = logging.getLogger(__name__)

TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")  # a tag users can pin as org/name@tag


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    commit: str | None  # sha of the upload commit
    url: str
    tag: str | None
    files: tuple[str, ...]  # paths in the repo


def find_publishable(path: str | Path) -> tuple[Path, Path | None]:
    """(checkpoint folder, run folder or None) for a training run folder (its best/) or a checkpoint folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path} is not a folder; give a training run folder (with best/) or a checkpoint folder")
    if (path / CONFIG_NAME).is_file() or (path / WEIGHTS_NAME).is_file():
        checkpoint = path
    elif (path / "best").is_dir():
        checkpoint = path / "best"
    else:
        raise CheckpointNotFoundError(f"{path} is neither a checkpoint folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a "
                                      "training run folder with best/")
    run = checkpoint.parent if (checkpoint.parent / "train_config.json").is_file() else None
    return checkpoint, run


def stage_for_upload(checkpoint: Path, run_dir: Path | None, dest: Path, repo_id: str | None = None) -> list[str]:
    """Copy what a repo holds into `dest`: config, safetensors, mapping JSON, metrics.jsonl and a model card."""
    validate_checkpoint(checkpoint)
    files = []
    for src in sorted(checkpoint.rglob("*")):
        rel = src.relative_to(checkpoint)
        if src.is_file() and src.suffix in (".json", ".safetensors"):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            files.append(rel.as_posix())
    if run_dir is not None and (run_dir / "metrics.jsonl").is_file():
        shutil.copy2(run_dir / "metrics.jsonl", dest / "metrics.jsonl")
        files.append("metrics.jsonl")
    (dest / "README.md").write_text(build_model_card(checkpoint, run_dir, repo_id))
    return sorted(files + ["README.md"])


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, api=None) -> PublishResult:
    """Upload a checkpoint (a run folder's best/, or a checkpoint folder) with a generated model card.

    revision: a tag to create on the upload commit (e.g. "v1"), so users can pin `org/name@v1`.
    token: default HF_TOKEN or the `hf auth login` token. api: an HfApi (tests pass a mock).
    """
    checkpoint, run_dir = find_publishable(folder)
    validate_checkpoint(checkpoint)
    repo, pinned = parse_repo_id(repo_id)
    if pinned:
        raise ValueError(f"give the repo id without '@' ({repo!r}) and the tag as revision=/--revision")
    if revision is not None and (not TAG_RE.fullmatch(revision) or ".." in revision):
        raise ValueError(f"revision {revision!r} is not a valid tag: letters, digits, '.', '_', '-', '/'")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ValueError("no Hugging Face token: pass --token/token=, set HF_TOKEN, or run `hf auth login`")
    api = api or huggingface_hub.HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    with tempfile.TemporaryDirectory(prefix="blendtalk-publish-") as tmp:
        files = stage_for_upload(checkpoint, run_dir, Path(tmp), repo)
        url = api.create_repo(repo, private=private, exist_ok=True, token=token)
        info = api.upload_folder(repo_id=repo, folder_path=tmp, token=token,
                                 commit_message=commit_message or f"Upload blendtalk checkpoint from {checkpoint.name}")
    commit = getattr(info, "oid", None)
    if revision is not None:
        api.create_tag(repo, tag=revision, revision=commit, token=token)
    logger.info("published %s to %s (commit %s%s)", checkpoint, repo, commit, f", tag {revision}" if revision else "")
    return PublishResult(repo, commit, str(url), revision, tuple(files))
