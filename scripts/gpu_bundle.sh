#!/usr/bin/env bash
# Pack this venv's TVM (compiler included) for a GPU machine that has Python 3.12 + PyTorch but no
# TVM and no network: writes .gpu/ (about 62 MiB, git-ignored through .git/info/exclude).
# On that machine, from the repository root:
#   source .gpu/setup.sh && python3 -m pytest -m gpu -q tests/ && python3 -m benchmarks.cuda_speed
set -euo pipefail
cd "$(dirname "$0")/.."
SITE=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PY=${GPU_PYTHON_VERSION:-3.12}
mkdir -p .gpu .git/info && grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || echo "/.gpu/" >> .git/info/exclude
tmp=$(mktemp -d) && trap 'rm -rf "$tmp"' EXIT
ffi=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('apache-tvm-ffi'))")
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp/whl" "apache-tvm-ffi==$ffi"
mkdir -p "$tmp/site" && .venv/bin/python -m zipfile -e "$tmp"/whl/*.whl "$tmp/site"
cp -r "$SITE/tvm" "$SITE"/apache_tvm-*.dist-info "$tmp/site/"
# the compiler library travels on its own, xz -9e (259 MB -> 59 MB); CUTLASS headers are not needed
rm -rf "$tmp/site/tvm/lib/libtvm_compiler.so" "$tmp/site/tvm/3rdparty" "$tmp/site/tvm/lib64"
find "$tmp/site" -name __pycache__ -prune -exec rm -rf {} +
tar cf - -C "$tmp/site" . | xz -9e -T0 > .gpu/tvmpy.tar.xz
xz -9e -T0 -c "$SITE/tvm/lib/libtvm_compiler.so" > .gpu/lc.so.xz
cat > .gpu/setup.sh <<'SETUP'
# source me on the GPU machine: installs the carried TVM into /tmp/site once per machine
if [ ! -f /tmp/site/tvm/lib/libtvm_compiler.so ]; then
  mkdir -p /tmp/site && tar xJf .gpu/tvmpy.tar.xz -C /tmp/site && xz -dc -T0 .gpu/lc.so.xz > /tmp/site/tvm/lib/libtvm_compiler.so
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
SETUP
du -ch .gpu/* | tail -1
