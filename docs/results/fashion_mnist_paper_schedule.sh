#!/usr/bin/env bash
# The paper's own schedule on random Fashion-MNIST labels (docs/results/fashion-mnist.md): MLP 1x512,
# lr 0.01 x 0.95 per 50,000 images (0.95 ** 1.2 per epoch of 60,000), 60 epochs (the lr is then
# 2.5% of its start), otherwise sweeps/fashion.py's protocol. About 4 minutes on 2 cores.
set -eu
cd "$(dirname "$0")/../.."
mkdir -p results
decay=$(.venv/bin/python -c "print(0.95 ** (60000 / 50000))")
.venv/bin/rethink-dist train --dataset fashion_mnist --channels 1 --arch mlp_1x512 --corruption labels --level 1.0 \
    --lr 0.01 --lr-decay "$decay" --epochs 60 --fit-threshold 0.99 --stop-when-fitted \
    --json results/paper-schedule.json
