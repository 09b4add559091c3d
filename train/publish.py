"""Publish a trained checkpoint to the Hugging Face Hub, with a generated model card.

    python train/publish.py runs/dfm-20260101-120000 --repo-id org/blendtalk-dfm
    python train/publish.py runs/dfm-... --repo-id org/blendtalk-dfm --revision v1 --private
    python train/publish.py runs/dfm-... --repo-id org/blendtalk-dfm --dry-run   # print the card, upload nothing

RUN_DIR is a training run folder (its best/ is uploaded, with metrics from metrics.jsonl and the
training config in the card) or a checkpoint folder (config.json + model.safetensors, and the
metrics.json test summary where there is one). Only config.json, *.safetensors, the JSON beside them
(mapping, metrics.json), metrics.jsonl and the card are uploaded. The card is
`blendtalk.model_card.build_model_card`'s, the same that assets/dfm/README.md and assets/speech/README.md
hold: `python train/publish.py assets/dfm --repo-id org/blendtalk-dfm` uploads the shipped DFM with it. The token comes
from --token, else HF_TOKEN, else `hf auth login`; prefer HF_TOKEN (a --token shows in `ps`).
Users then load it with BLENDTALK_DFM=org/name (or BLENDTALK_SPEECH) or `org/name@v1`.
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from huggingface_hub.errors import HfHubHTTPError

from blendtalk.hub import parse_repo_id
from blendtalk.publish import find_publishable, push_to_hub, stage_for_upload


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("run_dir", type=Path, help="training run folder (uses best/) or checkpoint folder")
    p.add_argument("--repo-id", required=True, help="Hub model repo org/name; created if missing")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--revision", help="tag to create on the upload commit, e.g. v1 (users pin org/name@v1)")
    p.add_argument("--token", help="Hugging Face write token (default: HF_TOKEN or the `hf auth login` token)")
    p.add_argument("--message", help="commit message")
    p.add_argument("--dry-run", action="store_true", help="print the files and the model card; upload nothing")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.dry_run:
            checkpoint, run = find_publishable(args.run_dir)
            repo, _ = parse_repo_id(args.repo_id)
            with tempfile.TemporaryDirectory(prefix="blendtalk-publish-") as tmp:
                files = stage_for_upload(checkpoint, run, Path(tmp), repo)
                print(f"would upload {checkpoint} to {repo}: {', '.join(files)}\n")
                print((Path(tmp) / "README.md").read_text())
            return 0
        result = push_to_hub(args.run_dir, args.repo_id, private=args.private, revision=args.revision,
                             token=args.token, commit_message=args.message)
    except (ValueError, FileNotFoundError, HfHubHTTPError) as err:  # clear errors from the checks above
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the network: huggingface_hub's HTTP client raises its own connection errors
        if "connect" not in type(err).__name__.lower() and "timeout" not in type(err).__name__.lower():
            raise
        print(f"error: could not reach the Hub ({type(err).__name__}: {err}); check the network (or HF_ENDPOINT) "
              "and run again (an upload is one commit: no files were committed)", file=sys.stderr)
        return 2
    tag = f" (tag {result.tag}: load with {result.repo_id}@{result.tag})" if result.tag else ""
    print(f"uploaded {len(result.files)} files to {result.url} at commit {result.commit}{tag}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
