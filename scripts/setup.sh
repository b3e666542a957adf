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
# torchvision has no CPU-only build on PyPI: `pip install torch torchvision` resolves a matching CUDA pair that
# also runs on CPU-only machines (see docs/dependencies: about 5 GB, about 90 s).
if ! $PY -c "import torch, torchvision" >/dev/null 2>&1; then
  $PY -m pip install -q torch torchvision
fi
$PY -m pip install -q -e ".[test]"
$PY -c "import open3d, cv2, torch, torchvision, preprocessing, crossmodal; print('crossmodal setup ok: torch', torch.__version__, '| open3d', open3d.__version__)"
