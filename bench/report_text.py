"""The fixed prose of docs/benchmarks.md (bench/report.py puts the tables between it).

Numbers that a result file holds are not typed here: the report computes them. What stays here is
how each measurement was taken and what it means; `{name}` fields are filled from the JSON.
"""

HEADER = """# Benchmarks

```bash
python -m bench.report            # regenerate this page from bench/results/*.json
python -m bench.report --check    # exit 1 if this page differs from what the JSON gives
```

Every table on this page is generated from a result file under `bench/results/` (named under each
table); `tests/test_report.py` fails when the page and the files disagree. Edit the text in
`bench/report_text.py` and the tables in `bench/report.py`, never this page. The CPU measurements
ran on a 2-core AMD EPYC VM (no GPU), one run per table; the same backends moved by up to 40 %
between quiet runs of that machine, so compare ratios within one table rather than across tables.
How to rerun each measurement on your own machine: docs/loaders.md, docs/convert.md, docs/cost.md;
on a GPU: docs/gpu.md. A benchmark writes under `runs/bench/` unless given `--publish`, the only way
it writes into `bench/results/` (the commands below carry it because they made these files)."""

CONVERT_QUALITY = """```bash
python -m bench.convert --images DIR --skip-throughput --publish --name convert-quality-cpu2
```

`--images` is a flat folder of real photos (here 500 ImageNet photos, one per class). Each is
re-encoded as ffcv's `RGBImageField` does (OpenCV/libjpeg-turbo) at every max side × quality and
decoded on one core (`bench/decode.py`: OpenCV's libjpeg-turbo, one thread, best of 5 passes).
PSNR is against the shrunk, uncompressed image. Single passes on this VM vary by ~20 % between
neighbouring rows. The converter's defaults are `--max-side 512 --quality 90 --write-mode jpg`
(why: docs/convert.md)."""

CONVERT_THROUGHPUT = """```bash
python -m bench.convert --images DIR --skip-quality --publish --name convert-cpu2
```

The same {n} photos through `fastmix.data.convert` on this {cpus}-core machine, per `--workers`
(ffcv's ~10 s first import excluded). `pytest bench/ --benchmark-only` times the per-image work
(`prepare`) with pytest-benchmark."""

LOADERS = """```bash
python -m bench.loaders --images DIR --sizes 224,160,128 --stages --publish \\
  --backends pil,pil:mmap,pil-wds,ffcv,ffcv-fulldecode,ffcv@320,opencv,opencv@320,dali-cpu,nvjpeg
```

`--images` converts the photos once ({images} used here), then measures each backend in a fresh
process: a warm-up epoch, then at least 4 epochs and 2 s, batch {batch}, {dtype}, `--workers
{workers}`, on this {cpus}-core CPU, torch {torch}, all in one run. The decode limit is
libjpeg-turbo decoding the same stored bytes on one core (`bench/decode.py`), times the workers;
for ffcv and opencv those bytes are the `.beton`'s own q90 copies, which decode faster than the
photos in the shards. "CPU cores used" is process CPU time (workers included) over wall time. The
same augmentation everywhere: RandomResizedCrop (scale 0.08–1, ratio 3/4–4/3) and a horizontal
flip. The befores of the loader work run in the same run: `ffcv-fulldecode` is ffcv with its own
full-decode decoders, and `NAME:mmap` hands its batches to normalization on fresh mmap'd pages
(glibc's allocator defaults, before `fastmix/devices/allocator.py`). `NAME@320` is that backend on
the same photos stored at max side 320 (converted once beside the data). The run also timed
`synthetic`, which hands back one batch held in memory: its "rate" (tens of millions of images/s)
was the loop's own overhead, not work any loader does, so it is left out here and bench.loaders no
longer measures it; the model's training rate is the ceiling."""

LOADERS_AFTER = """Why `opencv` beats ffcv on the same bytes (next table): a cheaper resize (bilinear after a
small Gaussian, against ffcv's INTER_AREA) and no numba pipeline or worker processes around the
decode. It is also closer to the baseline's pixels (`psnr_vs_pil_db` in the stage JSON). The
nvjpeg backend's CPU fallback is the slowest: its batched `roi_align` crop-resize is written for a
GPU and runs in float on the CPU (hand-off+other in the stage table)."""

STAGES = """```bash
python -m bench.stages --data data/bench-imagenet-sample --sizes 224,160,128   # or bench.loaders --stages
```

Each stage of every CPU backend's train path runs on its own, on one core, over the same stored
images, best of {repeats}. DALI's stages run inside its pipeline, so they are differences between
pipelines that stop one operator later. "hand-off+other" is the loader's measured CPU time per
image (cores used / img/s, loader table) minus its stages: worker IPC or thread hand-off,
batching, scheduling and contention between busy cores; stage timings are best-of on an idle
core and the loader columns one busy window, so it can come out negative."""

STAGES_AFTER = """PSNR vs PIL (ffcv and opencv rows): their train outputs against torchvision's RandomResizedCrop
(PIL decode, crop, antialiased bilinear) of the same stored bytes and crop boxes, median over the
images; it measures how far each fast path is from the baseline's augmentation (the `.beton`'s own
re-encode loss is in the storage table). This run's reference resized with PIL's `resize(box=)`,
which lets the filter read a pixel past the box; the reference now crops first, as torchvision
does, and a rerun of `python -m bench.stages --backends ffcv,opencv --sizes 224,160,128` moved
every median by at most 0.3 dB (that rerun's JSON is not committed)."""

STORAGE = """```bash
python -m bench.convert --images DIR --skip-throughput --skip-quality \\
  --storage jpg:512,jpg:384,jpg:320,jpg:256,proportion@0.5:512,raw:320,raw:256 --storage-size {size} \\
  --publish --name storage-cpu2
```

Each row is a `.beton` written by `fastmix.data.convert` (ffcv's `RGBImageField`, q90) from the
{n} photos: stored KB per image, the share stored as JPEG, the decode limit's rate on one core
(raw images need no decode, so `proportion` is the rate per image of the mix), decode +
RandomResizedCrop to {size} px through the ffcv backend's decoder on one core, and PSNR against the
source photo, at the stored size (the JPEG loss) and after the val transform at {size} px (JPEG and
resolution loss together). GB = KB/image × 126,689 ImageNet-100 train images."""

STORAGE_AFTER = """For epochs at low resolution a smaller max side decodes several times faster at a small PSNR
cost at that resolution; at 224 px keep the 512 px `.beton` (full resolution for large crops).
`raw` needs no decode but several times the disk of q90 JPEG at the same side, and `proportion`
sits between. A lower max side is a second `.beton` (docs/convert.md)."""

FEED = """```bash
python -m bench.feed --sizes 224,160,128 --publish   # reads bench/results/loaders-cpu2.json
```

Each catalog GPU's training rate for {model} (batch {batch}; the cost model's `predict_step`,
efficiencies: {efficiency}; fp16 where the GPU has fp16 tensor cores) divided by each loader's
measured images/s per CPU core (`images_per_s / cpu_cores_used` in the loader JSON). Uncalibrated
rates carry the cost model's range; each cell gives the cores at the predicted rate and, after ≤,
at the fast end of that range. Cores are the loader machine's ({cpus}-core VM) cores; the befores
and synthetic are left out. `tools/estimate_cost.py --plan` reads the same per-core rates."""

CALIBRATION = """```bash
python -m bench.calibration --threads 1
```

One op-level calibration (`fastmix.perf.opbench.quick_cases` on a CPU: every distinct op of the
three ImageNet variants at one small resolution each, batches 1 and 3, both layouts, fp32, timed
alone; AdamW over each variant's parameters; fixed costs from a small probe ConvMixer), then
held-out whole steps, each measured (median of 3 sweeps over all configurations, 3 steps each
after 2 warm-up steps) and predicted. The column "end-to-end calibration error" is the older
profiler-breakdown calibration, fitted on the first row, as a cross-check. Load average
{before:.1f} before, {after:.1f} after. The goal is 15 % on every row: {summary}."""

CALIBRATION_AFTER = """Both the op benchmark and the whole steps run with glibc keeping large buffers in its heap, as
every CPU training run does once its loader normalizes a batch (`fastmix/devices/allocator.py`;
`fastmix.perf.calibration.steady_host_allocator`). Without it a fresh process mmaps and zeroes
large temporaries on every call and timings depend on what ran before. The op benchmark times the
ops round-robin over the cases and the whole steps are measured in sweeps over all configurations,
so a slow spell of the shared machine lands on a few timings of every variant instead of on all
timings of one."""

TTA_MISSING = """Tiny ImageNet (64 px) on a 2-core CPU: the `tiny64` recipe, time to accuracy per loader. Not
measured yet: the page gets its table when `bench/results/tta/tta.json` exists."""

TINY64_MISSING = """The `tiny64` recipe's 30-minute run on a 2-core CPU. Not measured yet: the page gets its table
when `bench/results/tiny64-cpu2/summary.json` exists."""

TINY64_BF16_MISSING = """The `tiny64` recipe's run with a budget planned in updates, on a 2-core CPU with native bf16. Not
measured yet: the page gets its table when `bench/results/tiny64-cpu2-bf16/summary.json` exists."""

TINY64_AVX2_MISSING = """The `tiny64` recipe's 30-minute run on a 2-core CPU without native bf16. Not measured yet: the page
gets its table when `bench/results/tiny64-cpu2-avx2/summary.json` exists."""

TINY64_BEFORE = """Tiny ImageNet at its stored 64 px, 100 classes (50,000 train / 5,000 val), trained from the
converted folder on {host} by

    tools/train.py --recipe tiny64 --data data/tinyimagenet

`{model}` ({overrides}), {precision}, {epochs} epochs at {sizes}. {budget}. The recipe's reasons are in
`fastmix/train/recipes/tiny64.yaml` (the recipe may have changed since this run: the run's `config`
is in its source file). Best val top-1 **{best:.1f} %** (epoch {epoch}) after {wall:.1f} minutes of training and
evaluation; {total}. MFU is against the peak the run measured at its start ({peak}). "Loader cost" is
the share of the rate the same update reaches with no loader running, timed after every epoch in the
same process (`fastmix/train/loadercost.py`); a figure that is not above zero is timing noise (no
loader makes an update faster) and is said as such; "data wait" is the time the loop blocked on the loader."""

TINY64_AFTER = """`tools/evaluate.py --checkpoint <run>/best.pt --data data/tinyimagenet` on the run's best
checkpoint: {top1:.2f} % top-1, {top5:.2f} % top-5 on the {images} val images ({backend}, {precision},
{size} px), against the run's own best of {best:.2f} %."""

TTA_BEFORE = """The same recipe and seed once per loader backend, top-1 against wall-clock (start-up included),
evaluated on the whole val split at fixed numbers of updates. Measured {date} on {host} with the
`{recipe}` recipe of that day ({model}, batch {batch}; bench.tta switches a recipe's time budget off:
its periods are fixed):

    python -m bench.tta --data data/tinyimagenet"""

TTA_AFTER = """A backend is skipped with its reason where it cannot run (pil reads an ImageFolder tree, which
Tiny ImageNet's download layout is not; its shards are read by pil-wds)."""

CPU_STEP_MISSING = """The tiny64 recipe's training step on this CPU, option by option and op by op. Not measured yet:
the page gets its table when `bench/results/cpu-step-tiny64.json` exists."""

CPU_STEP_BEFORE = """The tiny64 recipe's update (fused AdamW, autocast, one batch held in memory) per variant, timed
round-robin in one process, and the recipe variant's step split by op with torch.profiler, on {host}:
`{model}` ({overrides}), batch {batch} at {size} px (the recipe of the day it ran):

    python -m bench.cpu_step --compile

Compare images/s across rows. MFU is against the host matmul this process measured first; on these
VMs the same 1024² bf16 matmul read 0.20 to 0.40 TFLOP/s from one process to the next, so an MFU
here is only as good as that reading."""

BUDGETS_MISSING = """The `tiny64` recipe at several time budgets on one machine. Not measured yet: the page gets its
table when `bench/results/tiny64-budgets/budgets.json` exists (`python -m bench.budgets --publish`)."""

BUDGETS_BEFORE = """The `{recipe}` recipe on Tiny ImageNet's shared half (100 classes, 50,000 train / 5,000 val) at
{count} time budgets, one after another on {host}, measured {date}:

    python -m bench.budgets --data data/tinyimagenet-b --minutes {minutes} --publish

What a budget buys is budget x speed, a number of updates, so one machine's budgets stand in for
machines of other speeds. Each row is the whole `tools/train.py` command, timed from outside; top-1
and top-5 are `tools/evaluate.py` on the run's best.pt at the recipe's test size, "last epoch" the
top-1 of the run's last epoch. "updates" is what the run trained, the first plan's in brackets
(timed before training; each size re-plans after its first epoch); "epochs" counts a cut last epoch
as its share."""

# issue 29's run on classes never shared, on a 2-core Intel Xeon with AVX512-BF16 and AMX: the recipe
# of that day with --set epochs=16 fitted 15 epochs of 781 updates in 1636 s for the whole command
AMX_RUN = {"epochs": 15, "updates": 15 * 781, "wall_s": 1636.0}

AMX_MATCH = """Which budget here buys what 30 minutes buy on the 2-core AMX Xeon of issue 29: that machine
trained {epochs} epochs ({updates:,} updates) of the same model, sizes and batch in {wall_s:.0f} s for the whole
command, {amx:.2f} updates/s; this run trained {rate:.2f} updates/s over its whole command, so the
AMX Xeon is {ratio:.2f}x this machine and its 29.5-minute budget matches {budget:.1f} minutes here. This
run's budget was {minutes:g} minutes."""
