#!/bin/bash
# The commands behind docs/benchmarks (each worker: 1 CPU thread; shared 2-core machine).
# Every pass merges into the one store, docs/benchmarks/results.json: a point measured again replaces
# the earlier record of that (model, resolution, mode), and the store is saved after every point, so a
# run cut short keeps what it measured. The report (README.md, the PNGs) is made from the store alone
# (step 9). The per-pass files these steps used to write (timing.json ... timing5.json, eager.json,
# issue12.json, issue12_repeats/) are no longer kept: `git show 09f87d9:docs/benchmarks/timing2.json`.
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=.venv/bin/python
STORE=docs/benchmarks/results.json
ALL="visiongru-ti visiongru-b sequencer2d-s sequencer2d-m sequencer2d-l sequencer2d-s-mingru deit-s swin-t convnext-t"
# 1. params + FLOPs for every model and resolution, plus the paper-fidelity points
$PY tools/benchmark.py --modes flops --fidelity --merge $STORE
# 2. first timing pass (measured while step 1 and the analysis scripts were also running; superseded
#    by step 4 where step 4 has the point)
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 40 --timeout 300 --max-step-s 60"
$B --models $ALL --resolutions 224 1024 --modes infer
$B --models visiongru-ti deit-s --resolutions 448 672 896 1248 --modes infer
$B --models $ALL --resolutions 224 --modes train
$B --models visiongru-ti deit-s --resolutions 448 672 896 1024 1248 --modes train
# 3. DeiT-S with mmpretrain's eager attention (the (N, N) matrix materialised), memory baseline
$PY tools/benchmark.py --merge $STORE --models deit-s-eager --resolutions 224 1024 \
    --modes infer --point-budget-s 20 --timeout 300
# 4. inference again with no other job of ours running
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 40 --timeout 300 --max-step-s 60"
$B --models $ALL --resolutions 224 --modes infer
$B --models visiongru-ti deit-s --resolutions 448 672 896 1024 1248 --modes infer
$B --models sequencer2d-s convnext-t swin-t --resolutions 448 672 896 1248 --modes infer
# 5. training steps again in the quieter conditions of step 4
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 30 --timeout 240 --max-step-s 60"
$B --models visiongru-ti deit-s --resolutions 224 448 672 896 1024 1248 --modes train
$B --models visiongru-b sequencer2d-s sequencer2d-m sequencer2d-l sequencer2d-s-mingru swin-t convnext-t \
    --resolutions 224 --modes train
# 6. inference of the other models again in the quieter conditions (until the time budget ran out)
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 30 --timeout 240 --max-step-s 60"
$B --models visiongru-b sequencer2d-s sequencer2d-m sequencer2d-l sequencer2d-s-mingru swin-t convnext-t \
    --resolutions 1024 --modes infer
$B --models visiongru-b sequencer2d-m sequencer2d-l sequencer2d-s-mingru --resolutions 448 672 896 1248 --modes infer
# 7. training steps of the other models at 448 and 672 (as far as the time budget allowed)
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 20 --timeout 180 --max-step-s 60"
$B --models visiongru-b sequencer2d-s sequencer2d-m sequencer2d-l sequencer2d-s-mingru swin-t convnext-t \
    --resolutions 448 672 --modes train
# 8. issue 12 (fused minGRU scan, chunked inference, recomputing training path): VisionGRU-Ti and DeiT-S
#    again, one after the other in one run per mode
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 30 --timeout 400 --max-step-s 60"
$B --models visiongru-ti deit-s --resolutions 448 512 672 896 1024 --modes infer --runs 5
$B --models visiongru-ti deit-s --resolutions 1024 --modes train
# 10. issue 12, 2026-11-26: oneDNN CPU inference GEMMs and the per-image default chunk; DeiT-S also on the
#     same GEMMs (deit-s-onednn), one run, machine load ~1
B="$PY tools/benchmark.py --merge $STORE --point-budget-s 30 --timeout 400 --max-step-s 60"
$B --models visiongru-ti deit-s deit-s-onednn --resolutions 448 512 --modes infer --runs 5
$B --models visiongru-ti deit-s deit-s-onednn --resolutions 672 896 1024 --modes infer --runs 5
# 9. the report (README.md and the PNGs, from the store; notes.md is appended by hand-written analysis)
$PY tools/benchmark_report.py $STORE --fidelity --out docs/benchmarks
