"""The application: training, evaluation and denoising of photos, on top of the runtime.

    cli.py          the command line (``python -m n2ngraph.run``)
    train.py        a training run: epochs, validation, checkpoints, resume
    config.py       a run's settings: the spec's recipe with overrides, data, device
    data.py         photos, noise models, crops, validation sets, the course's .pkl files
    pairs.py        an epoch's pairs a chunk at a time, each a function of (seed, epoch, chunk)
    stream.py       those chunks drawn ahead by a background thread into a bounded queue
    folder.py       a folder of photos decoded a photo at a time, a bounded cache
    images.py       photos in and out, denoising large photos in tiles
    checkpoint.py   safetensors checkpoints;  pretrained.py  the shipped weights
    metrics.py, plots.py, fileio.py   PSNR, figures, atomic writes and run-directory locks
"""
