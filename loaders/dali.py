"""DALI: readers.webdataset over the shards and their indexes; nvJPEG (mixed) or CPU decode.

On a GPU, `decode_device="mixed"` decodes with nvJPEG (and the hardware JPEG decoder on
A100/H100, `hw_decoder_load`); train crops are fused into the decode
(`decoders.image_random_crop`: only the crop's blocks are decoded). Without a GPU the
pipeline runs on the CPU with `device_id=None`. DALI shards contiguously (`shard_id`,
`num_shards`) and shuffles through a buffer (`initial_fill`), not a full permutation.

DALI re-reads each `.cls` every epoch, so every batch's labels are checked on the CPU before they
go to the device (one vectorized pass; loaders/labels.py), a bad one named by its shard and member
from the reader's source_info. A JPEG that does not decode stops DALI with its decoder's words
("nvImageCodec failure: '#4'") and no file: the failed batch is then replayed without decoding (the
reader is seeded, so the same samples in the same order) and its members decoded with PIL to name
the bad one (`undecodable`). On a GPU (`mixed`) the same code runs, untested there: the labels stay
on the CPU (pinned, then copied without blocking) and only the images come out on the device.

A train epoch is a function of (seed, rank, epoch): each gets a fresh pipeline seeded from
those three, reading the shard that DALI's own rotation would reach by then, so a resumed run
sees the same order and augmentation as an uninterrupted one. A pipeline keeps its random
streams running across epochs, so reusing one could not restart at epoch k without replaying
0..k-1. The cost is one pipeline build per epoch: 0.03 s on the CPU, 0.8 s with RandAugment
(whose conditionals DALI's autograph converts on every build), against an epoch of minutes.
"""
from __future__ import annotations

import warnings

from .common import BaseLoader, LoaderConfig, normalize, parse_rand_augment, require
from .dali_errors import labels_of, undecodable
from .labels import LABEL_DIGITS, class_count
from .shardindex import ShardIndex


PREFETCH = 2  # batches DALI runs ahead: a decode error may belong to any of them

DALI_WHEELS = {"12": ("nvidia-dali-cuda120", "dali-cuda12"), "13": ("nvidia-dali-cuda130", "dali")}


def dali_package(cuda: str | None = "torch") -> tuple[str, str]:
    """(PyPI package, fastmix extra) of the DALI build for this torch's CUDA (`torch.version.cuda`):
    12.x -> nvidia-dali-cuda120 (drivers R535-R560 run it), 13.x -> nvidia-dali-cuda130 (R580+).
    A CPU-only torch takes the CUDA 13 build, as CI does (its CPU pipelines run anywhere)."""
    if cuda == "torch":
        import torch
        cuda = torch.version.cuda
    if cuda is None:
        return DALI_WHEELS["13"]
    major = cuda.split(".")[0]
    if major not in DALI_WHEELS:
        raise ValueError(f"torch is built for CUDA {cuda}: DALI 2.x ships for CUDA 12 and 13 only; "
                         "install a CUDA 12 or 13 build of torch")
    return DALI_WHEELS[major]


def check_dali_build() -> None:
    """Warn when the installed DALI is built for another CUDA major than torch (its GPU ops then
    fail to load, or need a newer driver than torch does)."""
    from importlib.metadata import PackageNotFoundError, version
    want, extra = dali_package()
    for package, _ in DALI_WHEELS.values():
        try:
            version(package)
        except PackageNotFoundError:
            continue
        if package != want:
            import torch
            warnings.warn(f"{package} is installed but torch is built for CUDA {torch.version.cuda}: "
                          f"pip install {want} (or 'fastmix[{extra}]'); README: install", stacklevel=3)


def without_dali() -> str:
    """What trains here without DALI (the GPU recipes default to it)."""
    import importlib.util

    import torch
    # opencv decodes with cv2 but reads the .beton through ffcv's Reader
    opencv = all(importlib.util.find_spec(m) is not None for m in ("cv2", "ffcv"))
    works = ["nvjpeg"] * torch.cuda.is_available() + ["opencv"] * opencv
    return f"or train with a backend that works here: --backend {' / '.join(works + ['resident'])}" + (
        " (resident: datasets that fit in device memory)")


class DALILoader(BaseLoader):
    def __init__(self, cfg: LoaderConfig):
        package, extra = dali_package()
        require("nvidia.dali", extra, f"pip install {package} (or 'fastmix[{extra}]')", without_dali())
        index = ShardIndex(cfg)  # checks every shard and index before DALI sees them
        super().__init__(cfg, len(index))
        self.tars = [str(t) for t in index.tars]
        decode = cfg.decode_device
        if decode == "auto":
            decode = "mixed" if cfg.torch_device.type == "cuda" else "cpu"
        if decode == "mixed" and cfg.torch_device.type != "cuda":
            raise ValueError("decode_device='mixed' (nvJPEG) needs a CUDA device")
        if cfg.torch_device.type == "cuda":
            check_dali_build()
        self.decode = decode
        self.classes = class_count(cfg.data)
        self._iter, self._in_epoch = None, False

    @property
    def AUGMENTS(self):  # everything after the decode runs where the decode does
        where = "gpu" if self.decode == "mixed" else "cpu"
        return {"random-resized-crop": where, "hflip": where, "rand-augment": where}

    @property
    def shard(self) -> int:
        """The shard this rank reads this epoch: DALI's readers move every rank on to the next
        shard each epoch (`stick_to_shard=False`), which a pipeline per epoch reproduces."""
        return (self.cfg.rank + self.epoch * self.cfg.is_train) % self.cfg.world_size

    @property
    def num_samples(self) -> int:  # DALI's contiguous shards: [floor(k*n/N), floor((k+1)*n/N))
        n, k, world = self.split_size, self.shard, self.cfg.world_size
        return (k + 1) * n // world - k * n // world

    def seed(self, epoch: int) -> int:
        """The pipeline's seed for `epoch`: distinct per rank (else every rank would draw the same
        crops, flips and ops) and per epoch, and nothing else."""
        import numpy as np
        return int(np.random.SeedSequence([self.cfg.seed, self.cfg.rank, epoch]).generate_state(1)[0] >> 1)

    def read(self, epoch: int):
        """The reader of `epoch`'s pipeline: (jpg, cls, source_info) nodes. Seeded on its own, so a
        pipeline of the reader alone (`undecodable`) reads the same samples in the same order."""
        from nvidia.dali import fn, types
        cfg = self.cfg
        jpg, cls = fn.readers.webdataset(
            paths=self.tars, index_paths=[t[:-4] + ".idx" for t in self.tars], ext=["jpg", "cls"],
            missing_component_behavior="error", name="reader", random_shuffle=cfg.is_train,
            initial_fill=1024, shard_id=self.shard, num_shards=cfg.world_size, seed=self.seed(epoch),
            # Pad the shard's last batch (the iterator drops the padding): epochs then line
            # up with the reader's, so every sample comes exactly once per epoch.
            pad_last_batch=True,
            dtypes=[types.UINT8, types.UINT8])
        # "<shard>:<offset>:<member>" per sample, padded to the batch's longest: names a bad label's file
        return jpg, cls, fn.pad(fn.get_property(jpg, key="source_info"), fill_value=0)

    def _pipeline(self, epoch: int):
        from nvidia.dali import fn, pipeline_def, types
        cfg, size = self.cfg, self.cfg.image_size
        dev = cfg.torch_device
        device_id = (dev.index or 0) if dev.type == "cuda" else None
        hw = {"hw_decoder_load": cfg.hw_decoder_load} if self.decode == "mixed" else {}

        @pipeline_def(batch_size=cfg.batch_size, num_threads=max(1, cfg.workers), device_id=device_id,
                      seed=self.seed(epoch), prefetch_queue_depth=PREFETCH,
                      enable_conditionals=bool(cfg.rand_augment))
        def pipe():
            jpg, cls, source = self.read(epoch)
            if cfg.is_train:
                images = fn.decoders.image_random_crop(
                    jpg, device=self.decode, output_type=types.RGB, random_area=list(cfg.scale),
                    random_aspect_ratio=list(cfg.ratio), num_attempts=10, **hw)
                images = fn.resize(images, resize_x=size, resize_y=size, antialias=True)
                if cfg.rand_augment:  # DALI's RandAugment (monotonic magnitudes; no mstd noise)
                    from nvidia.dali.auto_aug import rand_augment
                    ra = parse_rand_augment(cfg.rand_augment)
                    images = rand_augment.rand_augment(images, n=ra["n"], m=ra["m"], shape=[size, size],
                                                       fill_value=128)
                mirror = fn.random.coin_flip(probability=0.5) if cfg.hflip else 0
            else:
                images = fn.decoders.image(jpg, device=self.decode, output_type=types.RGB, **hw)
                images = fn.resize(images, resize_shorter=cfg.resize_to, antialias=True)
                mirror = 0
            # HWC uint8 out: viewed as NCHW it is already channels_last; normalized on the device.
            images = fn.crop_mirror_normalize(images, dtype=types.UINT8, output_layout="HWC",
                                              crop=(size, size), mirror=mirror)
            labels = fn.pad(cls, fill_value=0, shape=[LABEL_DIGITS])
            if device_id is not None:  # a CUDA run: the images leave DALI on the device; the labels
                images = images.gpu()  # stay on the CPU to be checked (__iter__)
            return images, labels, source

        return pipe()

    prefetch = PREFETCH

    def _build(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        self._iter = None  # the last epoch's pipeline and its buffers go before the next is built
        self.built_epoch = self.epoch  # what a replay of a failed batch reads (dali_errors.py)
        policy = LastBatchPolicy.DROP if self.cfg.last_batch == "drop" else LastBatchPolicy.PARTIAL
        # DALI's RandAugment calls its own deprecated aliases and forces their warnings on;
        # recording them is the one way to keep them off the user's console.
        with warnings.catch_warnings(record=True):
            try:
                pipe = self._pipeline(self.epoch)
            except TypeError:
                # Seen once in the test suite: autograph failed to convert RandAugment (CPython
                # 3.11's "AST constructor recursion depth mismatch", gh-106905, a race with another
                # thread), then its unconverted `if` raised. The conversion restarts from scratch.
                if not self.cfg.rand_augment:
                    raise
                pipe = self._pipeline(self.epoch)
            pipe.build()
        self._iter = DALIGenericIterator(pipe, ["images", "labels", "source"], reader_name="reader",
                                         last_batch_policy=policy, auto_reset=True)

    def __iter__(self):
        done = 0  # batches handed out this epoch
        try:
            if self._iter is None or self.cfg.is_train:  # train: a pipeline per epoch (module docstring)
                self._build()  # which runs the first batch already
            elif self._in_epoch:  # DALI cannot rewind mid-epoch: finish the abandoned one first
                try:
                    while True:
                        next(self._iter)  # not `for`: iter() on a mid-epoch DALI iterator warns
                except StopIteration:
                    pass
            self._in_epoch = True
            while True:
                try:
                    b = next(self._iter)[0]
                except StopIteration:
                    break
                images = b["images"].permute(0, 3, 1, 2)  # NHWC storage = NCHW channels_last
                labels = labels_of(b["labels"], b["source"], self.classes)
                if self.cfg.torch_device.type == "cuda":  # pinned: the copy does not wait for the device
                    labels = labels.pin_memory().to(self.cfg.torch_device, non_blocking=True)
                done += 1
                yield normalize(images, self.cfg), labels
        except RuntimeError as e:  # DALI's pipeline is dead after an error: the next epoch builds anew
            self._iter, self._in_epoch = None, False
            raise undecodable(self, done, e) from None
        self._in_epoch = False
