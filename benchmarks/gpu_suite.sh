#!/usr/bin/env bash
# The whole GPU table in one go, on a machine with one CUDA GPU:
#   bash benchmarks/gpu_suite.sh                 # results under benchmarks/results/gpu/, tables in benchmarks/README.md
#   bash benchmarks/gpu_suite.sh --cpu-smoke     # every step in its quick form on CPU (what CI runs)
#
# 0. the CUDA tests: the property tests on the compiled Triton kernels, opcheck, inductor, autocast, training;
# 1. the fused ops vs eager vs torch.compile, forward+backward, fp32/bf16/fp16, B=256, D in {20, 512, 4096, 16384}
#    and a 4x64x64 spatial latent, timed from Python (launch overhead included) and from CUDA graphs (GPU time),
#    with the seeded-noise (Philox in the kernel) and continuous-Bernoulli variants of the Triton path;
# 2. the Triton kernels autotuned over BLOCK/num_warps (triton.autotune), the chosen configs logged;
# 3. end-to-end images/s for the MLP and the conv VAE, with and without torch.compile and AMP;
# 4. registers and load widths of the kernels (no GPU needed);
# 5. diffusers' AutoencoderKL, SD kl-f8 layout at 256x256: the diffusers-style loop (fp32, bf16) against vaefast
#    (bf16, fp32, activation checkpointing, channels_last), images/s, CUDA max allocated, PSNR.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

if [[ "${1:-}" == "--cpu-smoke" ]]; then
  out=${2:-$(mktemp -d)}
  echo "gpu_suite: CPU smoke run into $out"
  for dtype in fp32 bf16 fp16; do
    TRITON_INTERPRET= $PY benchmarks/bench_loss.py --quick --dtype "$dtype" --device cpu --results "$out"
  done
  TRITON_INTERPRET=1 $PY benchmarks/triton_autotune.py --smoke --results "$out"
  TRITON_INTERPRET= $PY benchmarks/triton_autotune.py --check --quick --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_throughput.py --quick --device cpu --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_autoencoder.py --quick --variants reference vaefast --results "$out"
  echo "gpu_suite: CPU smoke run passed"
  exit 0
fi

if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_suite: no CUDA GPU visible to torch; run with --cpu-smoke to check the scripts on CPU" >&2
  exit 2
fi
unset TRITON_INTERPRET
out=benchmarks/results/gpu
mkdir -p "$out"
$PY -c "import torch; print('GPU:', torch.cuda.get_device_name())"
TRITON_INTERPRET=0 $PY -m pytest -q tests/test_cuda.py tests/test_fused_ops.py -k cuda
for dtype in fp32 bf16 fp16; do
  $PY benchmarks/bench_loss.py --suite gpu --dtype "$dtype" --device cuda
  $PY benchmarks/bench_loss.py --suite gpu --dtype "$dtype" --device cuda --cuda-graphs --rounds 5
done
$PY benchmarks/triton_autotune.py --results "$out"
$PY benchmarks/bench_throughput.py --device cuda
$PY benchmarks/triton_inspect.py
$PY benchmarks/bench_autoencoder.py --device cuda --preset sd-kl-f8 --size 256 --batch-size 8 --steps 30 \
  --rounds 1 --train-images 512 --test-images 32 \
  --variants reference reference-bf16 vaefast vaefast-fp32 vaefast-ckpt vaefast-channels-last
cp benchmarks/results/bench_loss-cuda-*.json benchmarks/results/bench_throughput-cuda.json \
  benchmarks/results/bench_autoencoder-cuda.json "$out"/ 2>/dev/null || true
echo "gpu_suite: done; results in $out and benchmarks/results/, tables in benchmarks/README.md"
