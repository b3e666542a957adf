#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (the last release, 2021) from the PyPI source
# distribution with the fixes it needs on Python 3.10+, numpy 2 and recent torch,
# and install the resulting wheel into the target Python environment.
#
# Why a throw-away build venv: ME's setup.py imports torch and (in pip's
# metadata step) numpy.distutils, which only numpy<2 provides. The build runs in
# a temporary venv created with --system-site-packages (so it sees the user's
# torch) that shadows numpy with numpy<2. The product is a wheel installed with
# --no-deps into the target interpreter: the user's numpy/torch are left alone.
# The extension does not use numpy's C API (its pybind11 numpy support resolves
# numpy at run time), so it runs with numpy 2.
#
# Fixes applied to the unpacked sdist:
#   1. `from collections import Sequence` -> `collections.abc` (Python >= 3.10).
#   2. src/global_pooling_cpu.cpp: the CPU PYTORCH_INDEX global pooling wrote
#      the pooled rows of batch b to row batch_index[b] (inverse permutation).
#   3. src/coordinate_map_cpu.hpp: the CPU origin map (the coordinates of a
#      global pooling output) was filled in hash-map order instead of sorted
#      by batch index, so pooled.F[i] was not sample i.
#
# Usage: scripts/install_minkowskiengine.sh [--python PY] [--cpu-only|--cuda]
#                                           [--jobs N] [--workdir DIR] [--keep]
#   --python PY   interpreter to install into (default: $PYTHON or python3)
#   --cpu-only    CPU build (--cpu_only --blas=openblas)
#   --cuda        CUDA build (--force_cuda --blas=openblas); needs nvcc matching
#                 torch's CUDA major version. Untested here (no GPU).
#   default       CUDA build when nvcc is on PATH and `nvidia-smi -L` lists a
#                 GPU, CPU build otherwise.
#   --jobs N      parallel compile jobs (default: nproc)
#   --workdir DIR build directory (default: a new temporary directory)
#   --keep        keep the build directory (default: removed on success)
set -euo pipefail

ME_VERSION=0.5.4
PY=${PYTHON:-python3}
MODE=auto
JOBS=$(nproc)
WORK=
KEEP=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --cpu-only) MODE=cpu; shift ;;
    --cuda) MODE=cuda; shift ;;
    --jobs) JOBS=$2; shift 2 ;;
    --workdir) WORK=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { echo "[install_minkowskiengine] $*"; }

if [[ $MODE == auto ]]; then
  if command -v nvcc >/dev/null && nvidia-smi -L >/dev/null 2>&1; then MODE=cuda; else MODE=cpu; fi
fi
if [[ $MODE == cuda ]]; then
  BUILD_FLAGS=(--force_cuda --blas=openblas)
else
  BUILD_FLAGS=(--cpu_only --blas=openblas)
fi
# Resolve the interpreter before the build venv is put on PATH.
PY=$($PY -c 'import sys; print(sys.executable)')
log "target interpreter: $PY, build: $MODE"
$PY -c 'import torch' || { echo "torch must be installed in $PY first" >&2; exit 1; }

# --- system BLAS -----------------------------------------------------------
if ! ldconfig -p | awk '/libopenblas\.so /{f=1} END{exit !f}'; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "libopenblas-dev is missing; run: apt-get install -y libopenblas-dev" >&2; exit 1
  fi
  log "installing libopenblas-dev"
  apt-get update -qq
  apt-get install -y -qq libopenblas-dev
fi

# --- build venv ------------------------------------------------------------
if [[ -z $WORK ]]; then WORK=$(mktemp -d -t me-build-XXXXXX); fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
log "work directory: $WORK"
$PY -m venv --system-site-packages "$WORK/venv"
VPY=$WORK/venv/bin/python
# The venv's bin comes first so that setup.py's own `pip uninstall
# MinkowskiEngine` acts on the (empty) venv, not on the target environment.
export PATH="$WORK/venv/bin:$PATH"
export SETUPTOOLS_USE_DISTUTILS=stdlib
$VPY -m pip install -q "numpy<2" wheel "setuptools<70"

# --- source ----------------------------------------------------------------
cd "$WORK"
$VPY -m pip download -q --no-build-isolation --no-binary :all: --no-deps \
  "MinkowskiEngine==$ME_VERSION" -d "$WORK"
rm -rf "MinkowskiEngine-$ME_VERSION"
tar xzf "MinkowskiEngine-$ME_VERSION.tar.gz"
cd "MinkowskiEngine-$ME_VERSION"

log "patching: collections.abc"
grep -rl --include='*.py' 'from collections import Sequence' MinkowskiEngine | while read -r f; do
  sed -i -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
         -e 's/^from collections import Sequence$/from collections.abc import Sequence/' "$f"
done
if grep -rq --include='*.py' 'from collections import Sequence' MinkowskiEngine; then
  echo "collections.Sequence patch did not apply" >&2; exit 1
fi

log "patching: CPU global pooling batch order"
patch -p1 --forward <<'PATCH'
diff -ruN a/src/coordinate_map_cpu.hpp b/src/coordinate_map_cpu.hpp
--- a/src/coordinate_map_cpu.hpp
+++ b/src/coordinate_map_cpu.hpp
@@ -29,6 +29,7 @@
 #include "kernel_map.hpp"
 #include "kernel_region.hpp"
 #include <numeric>
+#include <set>
 #include <omp.h>
 #include <torch/extension.h>
 
@@ -504,8 +505,13 @@
     std::for_each(dst.begin(), dst.end(), [](auto &i) { i = 0; });
 
     coordinate<coordinate_type> tmp_coordinate(&dst[0]);
-    for (auto const &kv : m_map) {
-      dst[0] = kv.first[0];
+    // Insert the batch indices in ascending order so that origin row i is the
+    // i-th smallest batch index (hash-map iteration order is arbitrary).
+    std::set<coordinate_type> batch_indices;
+    for (auto const &kv : m_map)
+      batch_indices.insert(kv.first[0]);
+    for (auto const b : batch_indices) {
+      dst[0] = b;
       auto result = origin_map.insert(tmp_coordinate, c);
       c += result.second;
     }
@@ -1055,9 +1061,14 @@
     std::for_each(dst.begin(), dst.end(), [](auto &i) { i = 0; });
     coordinate<coordinate_int_type> tmp_coordinate(&dst[0]);
 
+    // Insert the batch indices in ascending order (see origin() above).
+    std::set<coordinate_int_type> batch_indices;
+    for (size_t i = 0; i < size(); ++i)
+      batch_indices.insert(
+          coordinate_int_type(p_tfield[i * m_coordinate_size]));
     index_type c = 0;
-    for (size_t i = 0; i < size(); ++i) {
-      dst[0] = coordinate_int_type(p_tfield[i * m_coordinate_size]);
+    for (auto const b : batch_indices) {
+      dst[0] = b;
       auto result = origin_map.insert(tmp_coordinate, c);
       c += result.second;
     }
diff -ruN a/src/global_pooling_cpu.cpp b/src/global_pooling_cpu.cpp
--- a/src/global_pooling_cpu.cpp
+++ b/src/global_pooling_cpu.cpp
@@ -142,15 +142,16 @@
         }
         ASSERT(batch_index.numel() == batch_size, "Invalid batch_size");
         LOG_DEBUG("batch wise avg.", vec_maps.size());
+        // Output row b is origin row b, whose batch index is batch_index[b];
+        // vec_maps is indexed by batch index.
         for (int b = 0; b < batch_size; ++b) {
-          LOG_DEBUG("batch ", b, "size", vec_maps[b].numel());
+          auto const &rows = vec_maps[batch_index[b].item<int64_t>()];
+          LOG_DEBUG("batch ", b, "size", rows.numel());
           if (use_avg)
-            out_feat[batch_index[b]] =
-                in_feat.index_select(0, vec_maps[b]).mean(0);
+            out_feat[b] = in_feat.index_select(0, rows).mean(0);
           else
-            out_feat[batch_index[b]] =
-                in_feat.index_select(0, vec_maps[b]).sum(0);
-          num_nonzero[batch_index[b]] = vec_maps[b].numel();
+            out_feat[b] = in_feat.index_select(0, rows).sum(0);
+          num_nonzero[b] = rows.numel();
         }
       } break;
       case PoolingMode::GLOBAL_SUM_POOLING_KERNEL:
PATCH

# --- build and install -----------------------------------------------------
log "building wheel (${BUILD_FLAGS[*]}, $JOBS jobs); takes several minutes"
export CFLAGS="${CFLAGS:-} -g0" CXXFLAGS="${CXXFLAGS:-} -g0" MAX_JOBS=$JOBS
$VPY setup.py bdist_wheel "${BUILD_FLAGS[@]}"
WHEEL=$(ls dist/MinkowskiEngine-"$ME_VERSION"-*.whl)
mkdir -p "$WORK/dist" && cp "$WHEEL" "$WORK/dist/"
log "installing $(basename "$WHEEL") into $PY (--no-deps)"
$PY -m pip install -q --no-deps --force-reinstall "$WHEEL"

cd /
$PY -c 'import MinkowskiEngine as ME; print("MinkowskiEngine", ME.__version__, "imported from", ME.__file__)'
if [[ $KEEP -eq 0 ]]; then rm -rf "$WORK"; else log "kept $WORK (wheel in $WORK/dist)"; fi
