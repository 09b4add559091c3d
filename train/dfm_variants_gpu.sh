#!/usr/bin/env bash
# On a GPU host with no network: make the synthetic corpora from the current emotion prototypes, train
# DFM variants (four unless VARIANTS says) at once for at most MINUTES each (less if the corpus took long, so that the whole
# run ends by DEADLINE_S seconds), score each on the held-out test (eval/disentangle.py, with
# expression_kept), and leave the weights and reports in $OUT. The variants: (a) the shipped recipe;
# (b-d) a stronger L1 on the cross halves, which is what favours reading an emotion's jaw drop on the
# expression side, with more expression blendshapes (b), a weaker invariance prior, which pushes any
# jaw motion out of the expression weights (c), or a still stronger L1 (d). VARIANTS="name=flags;..."
# trains others instead.
# Wheels for what the host lacks (espeakng-loader, soundfile, cffi, pycparser, tqdm; cp312) go in .whl/.
#     EPOCHS=38 MINUTES=4.8 DEADLINE_S=530 OUT=out bash train/dfm_variants_gpu.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L
python3 -c "import torch, scipy, espeakng_loader, soundfile; print(torch.__version__)" || exit 1
t0=$(date +%s)
python3 -m blendtalk.data.synth --out data/synth > $OUT/synth.log 2>&1 || { tail -20 $OUT/synth.log; exit 1; }
echo "corpus in $(( $(date +%s) - t0 )) s"; du -sh data/synth
# scoring the four takes about a minute and a half: train only for what is left before then
minutes=$(python3 -c "print(round(min(${MINUTES:-5.3}, (${DEADLINE_S:-600} - $(( $(date +%s) - t0 )) - 100) / 60), 2))")
echo "training for $minutes min"
common="-K 16 --lambda-speech-upper 1 --cosine-lr --epochs ${EPOCHS:-45} --max-minutes $minutes --val-every 1000 --device cuda"
# VARIANTS: "name=flags;name=flags;..." (default: the four recipes above)
VARIANTS=${VARIANTS:-"a=--expression-blendshapes 10 --lambda-sparse 0.1 --lambda-invariance 1000;\
b=--expression-blendshapes 16 --lambda-sparse 0.3 --lambda-invariance 1000;\
c=--expression-blendshapes 10 --lambda-sparse 0.3 --lambda-invariance 300;\
d=--expression-blendshapes 10 --lambda-sparse 1.0 --lambda-invariance 1000"}
IFS=';' read -ra specs <<< "$VARIANTS"
names=()
for spec in "${specs[@]}"; do
  v=${spec%%=*}; names+=("$v")
  python3 train/train_dfm.py $common ${spec#*=} --out runs/$v > $OUT/$v.log 2>&1 &
done
wait
echo "trained at $(( $(date +%s) - t0 )) s"
for v in "${names[@]}"; do
  run=$(ls -d runs/$v/dfm-* | head -1)
  python3 eval/disentangle.py --data data/synth --dfm $run/best --max-sentences 6 --device cuda --json $OUT/eval_$v/disentangle.json > $OUT/eval_$v.log 2>&1 &
done
wait
echo "scored at $(( $(date +%s) - t0 )) s"
mkdir -p /tmp/keep
for v in "${names[@]}"; do
  run=$(ls -d runs/$v/dfm-* | head -1); tail -1 $run/metrics.jsonl
  mkdir -p /tmp/keep/models/$v; cp $run/best/config.json $run/train_config.json $run/metrics.jsonl /tmp/keep/models/$v/
  cp $run/best/model.safetensors $OUT/model_$v.safetensors
done
mv $OUT/*.log /tmp/keep/; mv $OUT/eval_*/ /tmp/keep/; tar czf $OUT/results.tgz -C /tmp/keep .
ls -la $OUT
