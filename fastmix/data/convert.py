"""Convert an ImageNet subset once into webdataset shards (+ DALI index) and FFCV .beton files.

Data flow, per split: scan the source -> plan (labels, keys, order, shards) -> a process
pool turns each file into a clean JPEG (images.prepare) -> shards written in order ->
the .beton written from the same accepted files -> manifest.json last.

Resume: each finished shard leaves a small state file under OUT/.state with the size and
sha256 of what it wrote; a rerun with --resume skips those whose outputs still match, and final
names only ever appear by atomic rename. The manifest is written last, so its presence means
the conversion is complete. Only files the state lists are ever deleted or replaced (outstate.py).
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from fastmix import __version__
from .images import Rejected, prepare
from .manifest import SOURCES_DIR, sources_rel, write_sources
from .outlock import OutputBusy, OutputLock
from .outstate import (FINAL, MANIFEST_TOOL, STATE_DIR, atomic_json as _atomic_json, changed, out_problem, owned, record,
                       sha256, write_failure)
from .shards import Sample, shard_name, write_shard
from .sources import SPLITS, Item, Source, SourceError, open_source, select_classes
from .workers import bounded_map

__all__ = ["ConvertConfig", "ConvertError", "convert", "plan", "sha256"]


FORMATS = ("wds", "ffcv")
# Shard keys are "<class index>_<position in the split>": unique by construction, and free of
# anything a file name may hold (dots, spaces, tabs, newlines, 200 characters); sources/<split>.jsonl
# maps each key back to its file. Part of the fingerprint: a resume never mixes key schemes.
KEY_SCHEME = "label_position"


class ConvertError(Exception):
    """The conversion cannot go on; the message names the file or setting and why."""


@dataclass
class ConvertConfig:
    source: str
    out: str
    layout: str = "auto"
    num_classes: int | None = 100          # None: every class
    class_list: str | None = None
    splits: tuple[str, ...] = SPLITS
    max_side: int = 512
    quality: int = 90
    subsampling: str = "4:2:0"             # chroma of re-encoded JPEGs: 4:2:0, or 4:4:4 (CIFAR)
    write_mode: str = "jpg"                # FFCV RGBImageField: jpg | raw | smart | proportion
    compress_probability: float = 0.5      # used by write_mode=proportion
    shard_size: int = 1000                 # source files per shard
    shuffle_seed: int = 0                  # train order in shards and .beton
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    ffcv_workers: int = 1                  # >1 is faster but the .beton layout is not reproducible
    formats: tuple[str, ...] = FORMATS
    resume: bool = False
    overwrite: bool = False

    def fingerprint(self, source: Source, wnids: list[str]) -> dict:
        """Everything that decides the output bytes (not `workers`, not resume flags)."""
        keep = ("max_side", "quality", "subsampling", "write_mode", "compress_probability", "shard_size",
                "shuffle_seed", "ffcv_workers", "splits", "formats")
        d = {k: getattr(self, k) for k in keep}
        d.update(source=str(Path(self.source).resolve()), layout=source.kind, classes=wnids, keys=KEY_SCHEME)
        return json.loads(json.dumps(d))


@dataclass
class SplitPlan:
    split: str
    items: list[Item]
    keys: list[str]
    labels: list[int]

    def shard_ranges(self, size: int) -> list[range]:
        return [range(i, min(i + size, len(self.items))) for i in range(0, len(self.items), size)]


def _keys(labels: list[int]) -> list[str]:
    return [f"{label:05d}_{i:08d}" for i, label in enumerate(labels)]


def _source_rows(sp: SplitPlan, accepted: list[int], root: str):
    """sources/<split>.jsonl: each written sample's key, label and file (relative to the source)."""
    prefix = root.rstrip(os.sep) + os.sep
    for i in accepted:
        item = sp.items[i]
        row = {"key": sp.keys[i], "label": sp.labels[i],
               "path": item.name[len(prefix):] if item.name.startswith(prefix) else item.name}
        if item.outside:
            row["outside"] = item.outside
        yield row


def _outside_notes(splits: dict) -> list[str]:
    """Symlinks that leave the source folder are followed, and said so."""
    return [f"{split}: {info['outside_source']} files are symlinks to outside the source folder, followed "
            f"(their real paths are in {info['sources']})" for split, info in splits.items() if info["outside_source"]]


def _size(item: Item) -> int:
    if item.problem:
        return 0
    return item.size if item.offset >= 0 else os.path.getsize(item.path)


# (flag, field, lowest, highest): numbers refused up front, naming the flag (a shard size of 0 used
# to end in a traceback from range() after the source had been scanned)
RANGES = (("--num-classes", "num_classes", 1, None), ("--max-side", "max_side", 1, None), ("--quality", "quality", 1, 100),
          ("--compress-probability", "compress_probability", 0, 1), ("--shard-size", "shard_size", 1, None),
          ("--workers", "workers", 0, None), ("--ffcv-workers", "ffcv_workers", 1, None))


def check_settings(cfg: ConvertConfig) -> None:
    unknown = [f for f in cfg.formats if f not in FORMATS] or ([] if cfg.formats else ["(none)"])
    if unknown:
        raise ConvertError(f"unknown output format {unknown[0]!r} in --formats; choose from {', '.join(FORMATS)}")
    for flag, name, low, high in RANGES:
        value = getattr(cfg, name)
        if value is not None and (value < low or (high is not None and value > high)):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConvertError(f"{flag} {value}: must be {allowed}")


def plan(cfg: ConvertConfig) -> tuple[Source, list[str], dict[str, str], dict[str, SplitPlan]]:
    """Everything decided before any image is touched; every input error is raised here."""
    check_settings(cfg)
    try:
        source = open_source(cfg.source, cfg.layout)
        available, names = source.classes()
        wnids = select_classes(available, cfg.num_classes, cfg.class_list)
        plans = {}
        for split in cfg.splits:
            items = source.items(split, wnids)
            counts = Counter(i.wnid for i in items if _size(i) > 0)
            empty = [w for w in wnids if counts[w] == 0]
            if empty:
                raise SourceError(f"{cfg.source}: {len(empty)} selected classes have no non-empty "
                                  f"file in {split}: {empty[:5]}")
            if split == "train":  # shards mix classes, so a shard-level shuffle is a good one
                random.Random(cfg.shuffle_seed).shuffle(items)
            label = {w: i for i, w in enumerate(wnids)}
            labels = [label.get(i.wnid, -1) for i in items]  # -1: a rejected name of no class
            plans[split] = SplitPlan(split, items, _keys(labels), labels)
    except (SourceError, OSError) as e:
        raise ConvertError(str(e)) from e
    return source, wnids, names, plans


def _prepare_one(args: tuple[Item, int, int, str]):
    item, max_side, quality, subsampling = args
    if item.problem:
        return item.problem
    try:
        return prepare(item.read(), max_side, quality, subsampling)
    except Rejected as e:
        return str(e)
    except OSError as e:
        return f"unreadable: {e}"


class Converter:
    def __init__(self, cfg: ConvertConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.state = self.out / STATE_DIR
        self.timings: dict[str, float] = {}
        self.outputs: dict[str, dict] = {}  # rel -> size and sha256 recorded when written

    def run(self) -> dict:
        t0 = time.perf_counter()
        source, wnids, names, plans = plan(self.cfg)
        self.timings["scan"] = time.perf_counter() - t0
        problem = out_problem(self.out, source.root)
        if problem:
            raise ConvertError(problem)
        self.writing: str | None = None  # what a write failure names
        try:
            with OutputLock(self.state):
                return self._run_locked(source, wnids, names, plans)
        except OutputBusy as e:
            raise ConvertError(str(e)) from None
        except OSError as e:  # a full disk, a read-only folder: one line, and a state --resume finishes
            raise ConvertError(write_failure(e, self.out, self.writing)) from None

    def _run_locked(self, source: Source, wnids: list[str], names: dict, plans: dict[str, SplitPlan]) -> dict:
        self._prepare_out(self.cfg.fingerprint(source, wnids), self._planned(plans))
        splits = {}
        for split, sp in plans.items():
            splits[split] = self._convert_split(sp, wnids, source)
        classes = [{"index": i, "wnid": w, "name": names.get(w, "")} for i, w in enumerate(wnids)]
        self.writing = f"{STATE_DIR}/{FINAL}"
        _atomic_json(self.state / FINAL, {"files": ["classes.json", "manifest.json"]})  # ours, before they exist
        self.writing = "classes.json"
        _atomic_json(self.out / "classes.json", classes)
        manifest = self._manifest(source, wnids, splits)
        self.writing = "manifest.json"
        _atomic_json(self.out / "manifest.json", manifest)
        return manifest

    def _planned(self, plans: dict[str, SplitPlan]) -> list[str]:
        """Every path this run may write, relative to OUT."""
        rels = ["classes.json", "manifest.json", f"{STATE_DIR}/run.json", f"{STATE_DIR}/{FINAL}"]
        for split, sp in plans.items():
            for n in range(len(sp.shard_ranges(self.cfg.shard_size))):
                rels.append(f"{STATE_DIR}/{shard_name(split, n)}.json")
                if "wds" in self.cfg.formats:
                    rels += [f"wds/{shard_name(split, n)}.tar", f"wds/{shard_name(split, n)}.idx"]
            if "ffcv" in self.cfg.formats:
                rels += [f"ffcv/{split}.beton", f"{STATE_DIR}/ffcv-{split}.json"]
            rels += [sources_rel(split), f"{STATE_DIR}/sources-{split}.json"]
        return rels

    def _prepare_out(self, fingerprint: dict, planned: list[str]) -> None:
        run_file = self.state / "run.json"
        ours = owned(self.out)
        present = [rel for rel in planned if (self.out / rel).exists()]
        resuming = self.cfg.resume and run_file.exists()
        if resuming:
            before = json.loads(run_file.read_text())
            if before != fingerprint:
                differ = sorted(k for k in fingerprint if before.get(k) != fingerprint[k])
                raise ConvertError(f"{self.out}: --resume with options that differ from the "
                                   f"interrupted run ({', '.join(differ)}); use --overwrite")
        elif present and not self.cfg.overwrite and not self.cfg.resume:
            raise ConvertError(f"{self.out}: already holds a conversion; pass --resume to "
                               "finish or reuse it, or --overwrite to start again")
        foreign = [rel for rel in present if rel not in ours]
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise ConvertError(f"{self.out / foreign[0]}: not written by this converter (its state in "
                               f"{self.state} does not list it){more}; move it away or choose another --out")
        if not resuming:
            for rel in sorted(ours):
                (self.out / rel).unlink(missing_ok=True)
        for sub in ("wds", "ffcv", SOURCES_DIR, STATE_DIR):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        for rel in {*planned, *ours}:  # leftovers of a killed run, by the names it writes through
            Path(f"{self.out / rel}.tmp").unlink(missing_ok=True)
        (self.out / "manifest.json").unlink(missing_ok=True)
        _atomic_json(run_file, fingerprint)

    def _convert_split(self, sp: SplitPlan, wnids: list[str], source: Source) -> dict:
        cfg, t0 = self.cfg, time.perf_counter()
        ranges = sp.shard_ranges(cfg.shard_size)
        states: dict[int, dict] = {}
        for n in range(len(ranges)):
            path = self.state / f"{shard_name(sp.split, n)}.json"
            if cfg.resume and path.exists():
                state = json.loads(path.read_text())
                bad = changed(self.out, state)
                if bad is None:
                    states[n] = state
                else:  # damaged or replaced since it was written: never re-hash it into the manifest
                    print(f"resume: {self.out / bad} differs from what was written; converting "
                          f"{shard_name(sp.split, n)} again", file=sys.stderr)
        todo = [n for n in range(len(ranges)) if n not in states]
        args = ((sp.items[i], cfg.max_side, cfg.quality, cfg.subsampling) for n in todo for i in ranges[n])
        results = bounded_map(_prepare_one, args, cfg.workers)
        bar = tqdm(total=sum(len(ranges[n]) for n in todo), desc=f"{sp.split}: images",
                   unit="img", disable=None)
        for n in todo:
            samples, rejected, reencoded = [], [], Counter()
            for i in ranges[n]:
                r = next(results)
                if isinstance(r, str):
                    rejected.append({"path": sp.items[i].name, "reason": r})
                else:
                    samples.append((i, Sample(sp.keys[i], r.jpeg, sp.labels[i])))
                    reencoded[r.reencoded or "kept"] += 1
                bar.update()
            states[n] = self._finish_shard(sp.split, n, samples, rejected, reencoded)
        bar.close()
        self.timings[f"{sp.split}.wds"] = time.perf_counter() - t0

        for state in states.values():
            self.outputs.update(state["outputs"])
        accepted = [i for n in range(len(ranges)) for i in states[n]["indices"]]
        per_class = Counter(sp.items[i].wnid for i in accepted)
        empty = [w for w in wnids if per_class[w] == 0]
        if empty:
            raise ConvertError(f"{sp.split}: {len(empty)} selected classes have no valid image "
                               f"(all rejected, see above): {empty[:5]}")
        beton = None
        if "ffcv" in cfg.formats:
            t1 = time.perf_counter()
            beton = self._write_beton(sp, accepted)
            self.timings[f"{sp.split}.ffcv"] = time.perf_counter() - t1
        sources = sources_rel(sp.split)
        self._write_output(f"sources-{sp.split}", sources,
                           lambda path: write_sources(path, _source_rows(sp, accepted, str(source.root))))
        outside = sum(1 for i in accepted if sp.items[i].outside)
        return {
            "source_files": len(sp.items),
            "written": len(accepted),
            "rejected": [r for n in range(len(ranges)) for r in states[n]["rejected"]],
            "reencoded": dict(sum((Counter(states[n]["reencoded"]) for n in states), Counter())),
            "per_class": {w: per_class[w] for w in wnids},
            "shards": [s["file"] for n in range(len(ranges)) if (s := states[n])["file"]],
            "beton": beton,
            "sources": sources,
            "outside_source": outside,  # files reached through symlinks that leave the source folder
        }

    def _finish_shard(self, split, n, samples, rejected, reencoded) -> dict:
        name = shard_name(split, n)
        wds = bool(samples) and "wds" in self.cfg.formats
        file = f"wds/{name}.tar" if wds else None
        with self._claim(name, [file, f"wds/{name}.idx"] if wds else []):
            self.writing = file or f"{STATE_DIR}/{name}.json"
            if wds:
                write_shard(self.out / file, [s for _, s in samples])
            outputs = record(self.out, [file, f"wds/{name}.idx"]) if wds else {}
            state = {"file": file, "indices": [i for i, _ in samples], "rejected": rejected,
                     "reencoded": dict(reencoded), "outputs": outputs}
            _atomic_json(self.state / f"{name}.json", state)  # written last: the shard is done
        return state

    @contextmanager
    def _claim(self, name: str, rels: list[str]):
        """Names the files about to be written as ours first, until their state is written: a kill
        in between must not leave files a resume would have to call foreign."""
        claim = self.state / f"{name}.writing.json"
        self.writing = f"{STATE_DIR}/{claim.name}"
        _atomic_json(claim, {"files": rels})
        yield
        claim.unlink()

    def _write_output(self, name: str, rel: str, write) -> dict:
        """Write one output file through `write(path)` under a claim, then record it in its state."""
        with self._claim(name, [rel]):
            self.writing = rel
            write(self.out / rel)
            state = {"file": rel, "outputs": record(self.out, [rel])}
            _atomic_json(self.state / f"{name}.json", state)
        self.outputs.update(state["outputs"])
        return state

    def _write_beton(self, sp: SplitPlan, accepted: list[int]) -> str:
        from .beton import write_beton
        rel = f"ffcv/{sp.split}.beton"
        done = self.state / f"ffcv-{sp.split}.json"
        if self.cfg.resume and done.exists():
            state = json.loads(done.read_text())
            bad = changed(self.out, state)
            if bad is None:
                self.outputs.update(state["outputs"])
                return rel
            print(f"resume: {self.out / bad} differs from what was written; writing it again", file=sys.stderr)
        self._write_output(f"ffcv-{sp.split}", rel, lambda path: write_beton(
            path, [sp.items[i] for i in accepted], [sp.labels[i] for i in accepted], self.cfg))
        return rel

    def _manifest(self, source: Source, wnids: list[str], splits: dict) -> dict:
        # What was recorded when each file was written, not what is on disk now.
        files = {rel: self.outputs[rel] for info in splits.values()
                 for rel in [f for s in info["shards"] for f in (s, s[:-4] + ".idx")] +
                 ([info["beton"]] if info["beton"] else []) + [info["sources"]]}
        return {
            "tool": {"name": MANIFEST_TOOL, "version": __version__},
            "source": {"path": str(Path(self.cfg.source).resolve()), "layout": source.kind,
                       "notes": list(source.notes) + _outside_notes(splits)},
            "options": {k: v for k, v in asdict(self.cfg).items()
                        if k not in ("source", "out", "resume", "overwrite", "workers")},
            "num_classes": len(wnids),
            "splits": splits,
            "files": files,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "workers": self.cfg.workers,
        }


def convert(cfg: ConvertConfig) -> dict:
    return Converter(cfg).run()
