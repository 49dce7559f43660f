#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one call of the lent GPU machine (~7 minutes on one H100/H200):
# bench_gpu.py's (a) Ray Train vs the plain graphed loop, (b) evaluation, (d) embedding, then its (c)
# fashion-mnist-gpu training, and, once the timed parts are over, bench_colour.py's likelihood
# comparison on colour-patches beside (c) on the same GPU (so (c)'s epochs are a lower bound).
#
# Prepare on this machine (the machine there has no network, no Ray, no pydantic):
#   ../shared/tools/device-bundle ray pydantic pydantic-core annotated-types typing-inspection \
#       typing-extensions jsonschema referencing rpds-py jsonschema-specifications tensorboardX pyyaml
#   mkdir -p .device-data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz .device-data/fashion-mnist/
#   echo /.device-data/ >> .git/info/exclude
# Run there with carry [.device-bundle, .device-data]:   bash bench/gpu_session.sh
# Results in $OUT: gpu.json (or gpu-partial.json if cut short), colour.jsonl, the logs, gpu.txt.
set -uo pipefail
out=${OUT:?set OUT to the folder for the results}
bash .device-bundle/install.sh || exit 1
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/gpu.txt" 2>&1
rm -f /tmp/timed.done
python bench/bench_gpu.py --data .device-data/fashion-mnist --train-minutes "${TRAIN_MINUTES:-4}" \
    --partial "$out/gpu-partial.json" --timed-done /tmp/timed.done >"$out/gpu.json" 2>"$out/gpu.log" &
bench=$!
while [ ! -e /tmp/timed.done ] && kill -0 "$bench" 2>/dev/null; do sleep 2; done
python bench/bench_colour.py --device cuda --seconds "${COLOUR_SECONDS:-70}" --k 500 --batch 64 --mixture \
    --json >"$out/colour.jsonl" 2>"$out/colour.log"
wait "$bench"
echo "bench_gpu exit $?"
tail -5 "$out/gpu.log"
cat "$out/colour.jsonl"
