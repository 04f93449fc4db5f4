#!/usr/bin/env bash
# System dependencies of the audio-visual data path (mmpgm.features, data_prep):
#   espeak-ng  -- speech synthesizer used by data_prep/synth_grid.py (Debian package).
# Python dependencies come from pip: pip install -e '.[prep]'
#   (librosa, soundfile, opencv-python-headless<5, scikit-image).
# Idempotent; runs as root (or with sudo available) and never reads stdin.
set -euo pipefail

if command -v espeak-ng >/dev/null 2>&1; then
    echo "av_deps: espeak-ng present ($(command -v espeak-ng))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "av_deps: espeak-ng missing and not root (no sudo); install it with: apt-get install -y espeak-ng" >&2
        exit 1
    fi
fi

if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq </dev/null
    $SUDO apt-get install -y -qq --no-install-recommends espeak-ng </dev/null
elif command -v dnf >/dev/null 2>&1; then
    $SUDO dnf install -y espeak-ng </dev/null
elif command -v apk >/dev/null 2>&1; then
    $SUDO apk add --no-cache espeak-ng </dev/null
else
    echo "av_deps: no supported package manager (apt-get/dnf/apk) to install espeak-ng" >&2
    exit 1
fi

command -v espeak-ng >/dev/null 2>&1 || { echo "av_deps: espeak-ng still missing after install" >&2; exit 1; }
echo "av_deps: installed $(espeak-ng --version | head -n1)"
