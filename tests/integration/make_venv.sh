#!/usr/bin/env bash
# A cached virtual environment for one framework's integration tests, from the pins beside this script.
#
# Run: bash tests/integration/make_venv.sh axolotl|llamafactory|unsloth [DIR]
# (prints the venv's python on stdout; default DIR is .venvs/FRAMEWORK. Axolotl: about 12 minutes and 4.3 GB
# cold; nothing when the venv was made from the same pins.) torch==2.13.0 goes first and the pins go in with
# --no-deps, so pip can never swap in a CUDA build of torch; LogitGuard goes in editable on top (what it needs
# beyond the pins too, every pinned package held to its pin).
set -euo pipefail
framework=$1
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pins=$here/$framework-requirements.txt
venv=${2:-$root/.venvs/$framework}
[[ -f $pins ]] || { echo "make_venv.sh: no pins for $framework ($pins)" >&2; exit 2; }
want=$(sha256sum "$pins" | cut -d' ' -f1)
if [[ ! -f $venv/.pins.sha256 || $(cat "$venv/.pins.sha256") != "$want" ]]; then
    echo "make_venv.sh: building $venv from $pins" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >&2
    "$venv/bin/pip" install -q torch==2.13.0 >&2
    "$venv/bin/pip" install -q --no-deps -r "$pins" >&2
    "$venv/bin/pip" install -q -e "$root" -c "$pins" >&2  # LogitGuard's own needs, within the pins
    if [[ $framework == llamafactory ]]; then  # it imports torchaudio at top level; PyPI's needs CUDA
        site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
        mkdir -p "$site/torchaudio"
        echo '"""Empty stand-in for LLaMA-Factory'"'"'s top-level import (tests/integration/make_venv.sh)."""' \
            >"$site/torchaudio/__init__.py"
    fi
    echo "$want" >"$venv/.pins.sha256"
fi
echo "$venv/bin/python"
