"""Analyse a perceptual study: MOS ± SD, one-sided paired t-tests against ours, Cohen's d (tables 3-5).

    python eval/study/analyze.py --manifest studies/s1/manifest.json --db studies/s1/ratings.sqlite --out results/s1
    python eval/study/analyze.py --manifest studies/s1/manifest.json --csv ratings.csv --allow-incomplete

Writes <out>/study_tables.md, <out>/study_results.json and a bar chart <out>/study_mos.png
(matplotlib) or <out>/study_mos.html (plotly, when matplotlib is not installed). Refuses data that
do not cover the design exactly; --allow-incomplete analyses the complete pairs and lists the rest.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path

from blendtalk.evaluation.study import ALPHA, ASPECT_LABELS, Study, StudyError
from blendtalk.evaluation.study_analysis import StudyAnalysis, analyze, report_markdown
from blendtalk.evaluation.study_store import RatingStore, read_rows_csv


def _finite(x):
    """NaN (an undefined statistic) as null: JSON has no NaN."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def plot(analysis: StudyAnalysis, study: Study, path_stem: Path) -> Path:
    """Grouped bars of MOS ± SD per method and aspect (* = below ours at alpha). Returns the file written."""
    methods = [m for m in study.methods if m != study.reference] + [study.reference]
    labels = [study.label(m) for m in methods]
    series = []
    for a in study.aspects:
        s = [analysis.score(a, m) for m in methods]
        stars = ["*" if m != study.reference and analysis.comparison(a, m).p < analysis.alpha else "" for m in methods]
        series.append((ASPECT_LABELS.get(a, a), [x.mos for x in s], [0 if math.isnan(x.sd) else x.sd for x in s], stars))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import plotly.graph_objects as go

        fig = go.Figure([go.Bar(name=name, x=labels, y=mos, error_y={"type": "data", "array": sd}, text=stars,
                                textposition="outside") for name, mos, sd, stars in series])
        fig.update_layout(barmode="group", yaxis={"title": "MOS (1-5)", "range": [0, 5.8]},
                          title=f"{study.name}: MOS ± SD (* p < {analysis.alpha} vs {study.label(study.reference)})")
        out = path_stem.with_suffix(".html")
        fig.write_html(out, include_plotlyjs=True)  # self-contained: the file opens offline
        return out
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.6 * len(methods) + 2, 4))
    for k, (name, mos, sd, stars) in enumerate(series):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(xs, mos, width, yerr=sd, capsize=3, label=name)
        for x, y, e, star in zip(xs, mos, sd, stars):
            if star and not math.isnan(y):
                ax.text(x, y + e + 0.05, star, ha="center")
    ax.set_xticks(range(len(methods)), labels, rotation=20, ha="right")
    ax.set_ylim(0, 6.2)  # headroom for the legend above the bars
    ax.set_ylabel("MOS (1-5)")
    ax.set_title(f"{study.name}: MOS ± SD (* p < {analysis.alpha} vs {study.label(study.reference)})")
    ax.legend(loc="upper left", ncols=len(series), frameon=False)
    fig.tight_layout()
    out = path_stem.with_suffix(".png")
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", type=Path, required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--db", type=Path, help="the rating app's SQLite file")
    src.add_argument("--csv", type=Path, help="an export of rate.py --export")
    p.add_argument("--out", type=Path, default=None, help="folder for tables, JSON and plot (default: beside the manifest)")
    p.add_argument("--alpha", type=float, default=ALPHA)
    p.add_argument("--unit", choices=("pair", "participant"), default="pair",
                   help="pair: participant x stimulus (the paper's); participant: means per participant first")
    p.add_argument("--allow-incomplete", action="store_true", help="analyse the complete pairs, list what is missing")
    args = p.parse_args(argv)
    try:
        study = Study.load(args.manifest)
        if args.db:
            if not args.db.is_file():
                raise StudyError(f"no ratings database at {args.db}")
            store = RatingStore(args.db, study)
            rows = store.rows()
            store.close()
        else:
            rows = read_rows_csv(args.csv)
        analysis = analyze(study, rows, args.alpha, args.unit, args.allow_incomplete)
    except (StudyError, OSError) as e:
        print(f"analyze: error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.manifest.parent
    out.mkdir(parents=True, exist_ok=True)
    text = report_markdown(analysis, study)
    (out / "study_tables.md").write_text(text)
    (out / "study_results.json").write_text(json.dumps(_finite(asdict(analysis)), indent=1) + "\n")
    figure = plot(analysis, study, out / "study_mos")
    print(text)
    print(f"wrote {out / 'study_tables.md'}, {out / 'study_results.json'}, {figure}")
    return 0


if __name__ == "__main__":
    from blendtalk.cli import run_script

    raise SystemExit(run_script(main))
