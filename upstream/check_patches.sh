#!/usr/bin/env bash
# Apply every patch here to a scratch copy of the installed SpikingJelly and run the tests:
# they must fail on the unpatched copy (they detect the defects) and pass on the patched one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
package="$(python -c 'import os, spikingjelly; print(os.path.dirname(spikingjelly.__file__))')"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$scratch/original" "$scratch/patched"
cp -r "$package" "$scratch/original/"
cp -r "$package" "$scratch/patched/"
for patch_file in "$here"/*.patch; do
    (cd "$scratch/patched" && patch -p1 --dry-run < "$patch_file" > /dev/null && patch -p1 -s < "$patch_file")
    echo "applies: $(basename "$patch_file")"
done
cd "$here"
if PYTHONPATH="$scratch/original" python -m pytest -q -p no:cacheprovider test/activation_based > /dev/null; then
    echo "the tests pass without the patches: they do not detect the defects" >&2
    exit 1
fi
echo "unpatched: tests fail, as they should"
PYTHONPATH="$scratch/patched" python -m pytest -q -p no:cacheprovider test/activation_based
