"""Where checkpoints come from: an argument, the environment, the Hugging Face Hub or the shipped ones.
(Uploading one is `publish`; its model card `model_card`.)

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
import threading
from dataclasses import dataclass, fields
from pathlib import Path

from safetensors import safe_open

from .constants import ASSETS_DIR
from .models import dfm, faceformer

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DOWNLOAD_PATTERNS = ("*.json", "*.safetensors", "README.md")  # config, weights, mapping JSON, card; never pickle
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub parses its boolean environment variables
MAX_REASON_CHARS = 240  # a fallback reason stays one readable log line
HUB_TIMEOUT_S = 120.0  # s one checkpoint download may take in all (BLENDTALK_HUB_TIMEOUT); then the shipped one is used
TIMEOUT_ENV = "BLENDTALK_HUB_TIMEOUT"


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
    from huggingface_hub import errors as hf_errors  # here, not at the top: a shipped checkpoint needs no Hub client
    from huggingface_hub.utils import validate_repo_id

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
    from huggingface_hub import constants as hf_constants

    now = any(os.environ.get(v, "").strip().upper() in TRUE_VALUES for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return now or bool(hf_constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """HF_HUB_CACHE, else HF_HOME/hub, read now; else huggingface_hub's default."""
    if value := os.environ.get("HF_HUB_CACHE"):
        return Path(value).expanduser()
    if value := os.environ.get("HF_HOME"):
        return Path(value).expanduser() / "hub"
    from huggingface_hub import constants as hf_constants

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
    import huggingface_hub
    from huggingface_hub import constants as hf_constants

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
    from huggingface_hub import errors as hf_errors

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
