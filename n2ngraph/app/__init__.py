"""The application: training, evaluation and denoising of photos, on top of the runtime.

    cli.py          the command line (``python -m n2ngraph.run``)
    train.py        a training run: epochs, validation, checkpoints, resume
    config.py       a run's settings: the spec's recipe with overrides, data, device
    data.py         training pairs, validation sets, noise models
    images.py       photos in and out, denoising large photos in tiles
    checkpoint.py   safetensors checkpoints;  pretrained.py  the shipped weights
    metrics.py, plots.py, fileio.py   PSNR, figures, atomic writes and run-directory locks
"""
