#!/usr/bin/env bash
# The whole GPU table in one go, on a machine with one CUDA GPU:
#   bash benchmarks/gpu_suite.sh                 # results under benchmarks/results/gpu/, tables in docs/performance.md
#   bash benchmarks/gpu_suite.sh --cpu-smoke     # every step in its quick form on CPU (what CI runs)
#   bash benchmarks/gpu_suite.sh --whole-step    # only the step-capture comparison (issue #16), about 8 minutes:
#       the MLP at batch 128 and 1024 and diffusers' AutoencoderKL, eager / reduce-overhead / whole-step capture,
#       fp32 and bf16: images/s and host time per step, into docs/performance.md
#
# 0. the CUDA tests: the property tests on the compiled Triton kernels, opcheck, inductor, autocast, training;
# 1. the fused ops vs eager vs torch.compile, forward+backward, fp32/bf16/fp16, B=256, D in {20, 512, 4096, 16384}
#    and a 4x64x64 spatial latent, timed from Python (launch overhead included) and from CUDA graphs (GPU time),
#    with the seeded-noise (Philox in the kernel) and continuous-Bernoulli variants of the Triton path;
# 2. the Triton kernels autotuned over BLOCK/num_warps (triton.autotune), the chosen configs logged;
# 3. end-to-end images/s for the MLP and the conv VAE, with and without torch.compile and AMP;
# 4. registers and load widths of the kernels (no GPU needed);
# 5. diffusers' AutoencoderKL, SD kl-f8 layout at 256x256: the diffusers-style loop (fp32, bf16) against vaefast
#    (bf16, fp32, activation checkpointing, channels_last), images/s, CUDA max allocated, PSNR;
# 6. the Latent-Diffusion recipe on the same layout, fp32 and bf16: the LDM flow, diffusers' script and vaefast's
#    single-pass LPIPSWithDiscriminator, images/s, memory, first-step gradient differences.
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
  # The MLP only: the conv model and the compile modes are each compiled elsewhere in the tests.
  TRITON_INTERPRET= $PY benchmarks/bench_throughput.py --quick --device cpu --models "mlp 784-400-20 on 28x28" \
    --precisions fp32 --modes eager whole-step --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_autoencoder.py --quick --variants reference vaefast --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_autoencoder.py --recipe ldm --quick --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_video.py --quick --results "$out"
  TRITON_INTERPRET= $PY benchmarks/bench_loss.py --noise --quick --device cpu --results "$out"
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

if [[ "${1:-}" == "--whole-step" ]]; then
  # The capture is checked first (the emulated-capture tests, then a real one on a few steps), so that a failure
  # costs seconds, not the budget.
  $PY -m pytest -q -x tests/test_whole_step.py
  timeout 420 $PY benchmarks/bench_throughput.py --device cuda --models "mlp 784-400-20 on 28x28" --batches 128 1024 \
    --modes eager reduce-overhead whole-step --precisions fp32 bf16 --steps 300 --name bench_step_capture-cuda \
    || echo "gpu_suite: the MLP step-capture run failed or timed out"
  timeout 240 $PY benchmarks/bench_autoencoder.py --device cuda --preset sd-kl-f8 --size 256 --batch-size 8 \
    --steps 30 --rounds 1 --train-images 512 --test-images 32 --name bench_step_capture_autoencoder-cuda \
    --variants vaefast vaefast-fp32 vaefast-whole-step vaefast-fp32-whole-step \
    || echo "gpu_suite: the AutoencoderKL step-capture run failed or timed out"
  cp benchmarks/results/bench_step_capture*-cuda.json "$out"/ 2>/dev/null || true
  echo "gpu_suite: whole-step done; tables in docs/performance.md"
  exit 0
fi
TRITON_INTERPRET=0 $PY -m pytest -q tests/test_cuda.py tests/test_fused_ops.py -k cuda
for dtype in fp32 bf16 fp16; do
  $PY benchmarks/bench_loss.py --suite gpu --dtype "$dtype" --device cuda
  $PY benchmarks/bench_loss.py --suite gpu --dtype "$dtype" --device cuda --cuda-graphs --rounds 5
done
# The latent op, eps given vs seeded (the default noise path), against a bandwidth probe: fractions of HBM bandwidth
$PY benchmarks/bench_loss.py --noise --device cuda
$PY benchmarks/triton_autotune.py --results "$out"
$PY benchmarks/bench_throughput.py --device cuda
$PY benchmarks/triton_inspect.py
$PY benchmarks/bench_autoencoder.py --device cuda --preset sd-kl-f8 --size 256 --batch-size 8 --steps 30 \
  --rounds 1 --train-images 512 --test-images 32 \
  --variants reference reference-bf16 vaefast vaefast-fp32 vaefast-ckpt vaefast-channels-last
for precision in fp32 bf16; do  # the Latent-Diffusion recipe (L1 + LPIPS + KL + PatchGAN), three ways, SD kl-f8 at 256
  $PY benchmarks/bench_autoencoder.py --recipe ldm --device cuda --preset sd-kl-f8 --size 256 --batch-size 4 \
    --steps 8 --rounds 2 --precision "$precision"
done
# Video autoencoders: the 5D recipe against the two-pass flow, and memory against frames (T = 1 .. 33)
$PY benchmarks/bench_video.py --device cuda --size 128 --memory-size 128 --frames 17 --batch-size 2 --rounds 2
cp benchmarks/results/bench_loss-cuda-*.json benchmarks/results/bench_loss-noise-cuda.json \
  benchmarks/results/bench_throughput-cuda.json \
  benchmarks/results/bench_autoencoder-cuda.json benchmarks/results/bench_ldm_recipe-cuda-*.json \
  benchmarks/results/bench_video-cuda.json "$out"/ 2>/dev/null || true
echo "gpu_suite: done; results in $out and benchmarks/results/, tables in docs/performance.md"
