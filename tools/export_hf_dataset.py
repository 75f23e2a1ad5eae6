#!/usr/bin/env python3
"""Exports a Hugging Face segmentation dataset to the folder layout segml reads.

    OUT/id2label.json                       {"0": "name", ...}
    OUT/{train,val,test}/images/<stem>.jpg|png
    OUT/{train,val,test}/labels/<stem>.png  8-bit single-channel class ids, 255 = ignore

(see include/segml/data/dataset.hpp and docs/datasets.md). Two sources:

    # with the `datasets` library (needs internet); id2label.json comes from the dataset repo:
    python3 tools/export_hf_dataset.py data/sidewalk --dataset segments/sidewalk-semantic
    # local parquet files (needs pyarrow), e.g. downloaded from the dataset's "Files" tab:
    python3 tools/export_hf_dataset.py data/sidewalk --parquet train-00000-of-00001.parquet \\
        --id2label id2label.json

Each row holds an image column and a label column (default `pixel_values` and `label`), each an
image as HF stores it: a struct {"bytes": ..., "path": ...}. A dataset with only a train split is
split with a seed, like the HF tutorial's `ds.train_test_split(test_size=0.2, seed=1)`: test gets
--test-fraction, val gets --val-fraction, train the rest. `--parquet val=FILE` assigns a file to a
split instead. `--class-map FILE` collapses classes on export (same JSON format as finetune_sidewalk's
--class-map, see docs/datasets.md) and writes the new id2label.json.

Guarantees: JPEG and PNG images are written byte for byte as stored (no re-encoding); other formats
are saved as PNG. Label maps are written as 8-bit grayscale PNG; a palette ("P") label map's indices
are the ids. Every row is checked before it is written: an image or label that does not decode, a
label whose size differs from its image's, a colour (RGB) label map or an id outside id2label
(other than 255) raises ExportError naming the split and row. Does not: download images referenced
only by URL, resize anything, or convert colour-coded label maps (give a class map of ids instead).

The core, export_rows(), needs only Pillow and numpy; `datasets`, `huggingface_hub` and `pyarrow`
are imported only by the source that needs them. tools/test_export_hf_dataset.py tests the core on
rows made in memory. The --dataset and --parquet sources were NOT run where this was written (no
network; pyarrow not installable on Debian 12 without PyPI): they only turn their input into the
same rows.
"""
import argparse
import io
import json
import os
import random
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

SPLITS = ("train", "val", "test")
HF_SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}


class ExportError(Exception):
    """A row that cannot be exported; the message names the split and row."""


# ------------------------------------------------------------------------------------------------
# Core: rows -> files (no pyarrow / datasets needed)
# ------------------------------------------------------------------------------------------------

def image_bytes(cell, where):
    """The encoded bytes of an image cell: {"bytes": b, "path": p}, raw bytes, or a PIL image."""
    if isinstance(cell, dict):
        if cell.get("bytes") is not None:
            return bytes(cell["bytes"])
        if cell.get("path") and os.path.isfile(cell["path"]):
            with open(cell["path"], "rb") as f:
                return f.read()
        raise ExportError(f"{where}: the image has no bytes and no readable path ({cell.get('path')!r})")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, Image.Image):
        buf = io.BytesIO()
        cell.save(buf, format="PNG")
        return buf.getvalue()
    raise ExportError(f"{where}: unsupported image cell of type {type(cell).__name__}")


def decode(data, where):
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ExportError(f"{where}: cannot decode ({e})") from None


def label_ids(img, where):
    """A label image -> uint8 (H, W) array of ids."""
    if img.mode in ("L", "P"):
        return np.asarray(img if img.mode == "L" else Image.frombytes("L", img.size, img.tobytes()), dtype=np.uint8)
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        a = np.asarray(img)
        if a.min() < 0 or a.max() > 255:
            raise ExportError(f"{where}: label ids must be in 0..255, found {a.min()}..{a.max()}")
        return a.astype(np.uint8)
    raise ExportError(f"{where}: the label map has mode {img.mode}; expected one channel of class ids "
                      "(L or P). A colour-coded label map needs converting to ids first")


def read_class_map(path, id2label):
    """A class-map JSON -> (lut of 256 new ids, new id2label). Formats, as segml's ClassMap:
    {"map": {"old": new, ...}, "id2label": {"0": "name", ...}} or {"old": new, ...} (new classes named
    "a+b" after the old ones). Ids not mentioned become 255 (ignore)."""
    with open(path) as f:
        j = json.load(f)
    mapping = j["map"] if "map" in j else j
    lut = np.full(256, 255, dtype=np.uint8)
    for old, new in mapping.items():
        if not (str(old).isdigit() and int(old) < 256 and isinstance(new, int) and 0 <= new <= 255):
            raise ExportError(f"class map {path}: bad entry {old!r}: {new!r} (expected \"old_id\": new_id in 0..255)")
        lut[int(old)] = new
    used = sorted({int(v) for v in lut if v != 255})
    if "map" in j:
        names = {int(k): v for k, v in j["id2label"].items()}
        if sorted(names) != list(range(len(names))) or (used and used[-1] >= len(names)):
            raise ExportError(f"class map {path}: its id2label must have the keys 0..n-1 and name every new id {used}")
        return lut, names
    if used != list(range(len(used))):
        raise ExportError(f"class map {path}: the new ids {used} must be exactly 0..n-1")
    names = {}
    for old in range(256):  # each new class is named after its old classes, "a+b", as segml's ClassMap
        new = int(lut[old])
        if new != 255:
            name = id2label.get(old, str(old))
            names[new] = names[new] + "+" + name if new in names else name
    return lut, names


def export_rows(rows, out_dir, split, num_labels, image_column="pixel_values", label_column="label", lut=None,
                start=0):
    """Writes rows (dicts with an image and a label cell) to out_dir/split/{images,labels}/<NNNNNN>.*,
    numbered from `start`. Returns the number written. Ids >= num_labels other than 255 (after the
    class map `lut`) are an error."""
    img_dir, lab_dir = os.path.join(out_dir, split, "images"), os.path.join(out_dir, split, "labels")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    n = 0
    for n, row in enumerate(rows, start=1):
        index = start + n - 1
        where = f"split {split}, row {index}"
        for col in (image_column, label_column):
            if col not in row:
                raise ExportError(f"{where}: no column {col!r} (columns: {sorted(row)})")
        data = image_bytes(row[image_column], f"{where} ({image_column})")
        img = decode(data, f"{where} ({image_column})")
        lab = decode(image_bytes(row[label_column], f"{where} ({label_column})"), f"{where} ({label_column})")
        if img.size != lab.size:
            raise ExportError(f"{where}: the label is {lab.size[0]}x{lab.size[1]} but the image is "
                              f"{img.size[0]}x{img.size[1]}")
        ids = label_ids(lab, f"{where} ({label_column})")
        if lut is not None:
            ids = lut[ids]
        bad = np.unique(ids[(ids >= num_labels) & (ids != 255)])
        if bad.size:
            raise ExportError(f"{where}: label ids {bad.tolist()} are outside 0..{num_labels - 1} (and not 255); "
                              "wrong id2label or class map?")
        stem = f"{index:06d}"
        if img.format in ("JPEG", "PNG"):
            with open(os.path.join(img_dir, stem + (".jpg" if img.format == "JPEG" else ".png")), "wb") as f:
                f.write(data)
        else:
            img.convert("RGB").save(os.path.join(img_dir, stem + ".png"))
        Image.fromarray(ids, mode="L").save(os.path.join(lab_dir, stem + ".png"))
    return n


def split_indices(n, val_fraction, test_fraction, seed):
    """A seeded shuffle of range(n) cut into {"train", "val", "test"} index lists (sorted)."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ExportError(f"split fractions val {val_fraction}, test {test_fraction}: need >= 0 with a sum < 1")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def write_id2label(out_dir, id2label):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "id2label.json"), "w") as f:
        json.dump({str(k): v for k, v in sorted(id2label.items())}, f, indent=1)
        f.write("\n")


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------

def hub_id2label(repo_id):
    from huggingface_hub import hf_hub_download
    with open(hf_hub_download(repo_id, "id2label.json", repo_type="dataset")) as f:
        return {int(k): v for k, v in json.load(f).items()}


def from_datasets(args):
    """{split: iterable of rows} from datasets.load_dataset, images left undecoded."""
    import datasets
    dd = datasets.load_dataset(args.dataset)
    found = {HF_SPLIT_NAMES[s]: dd[s] for s in dd if s in HF_SPLIT_NAMES}
    if "train" not in found:
        raise ExportError(f"{args.dataset} has no train split (splits: {list(dd)})")
    for k, ds in found.items():
        for col in (args.image_column, args.label_column):
            ds = ds.cast_column(col, datasets.Image(decode=False))
        found[k] = ds
    if "test" not in found and args.test_fraction > 0:  # as the HF tutorial: train_test_split(0.2, seed=1)
        parts = found["train"].train_test_split(test_size=args.test_fraction, seed=args.seed)
        found["train"], found["test"] = parts["train"], parts["test"]
    if "val" not in found and args.val_fraction > 0:
        parts = found["train"].train_test_split(test_size=args.val_fraction / (1 - args.test_fraction), seed=args.seed)
        found["train"], found["val"] = parts["train"], parts["test"]
    return found


def from_parquet(args):
    """{split: iterable of rows} from local parquet files (pyarrow), streamed in record batches."""
    import pyarrow.parquet as pq
    files = {s: [] for s in SPLITS}
    for spec in args.parquet:
        split, sep, path = spec.partition("=")
        if not sep or split not in SPLITS:
            split, path = "train", spec
        files[split].append(path)

    def rows(paths, keep=None):
        i = 0
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=32, columns=[args.image_column, args.label_column]):
                for row in batch.to_pylist():
                    if keep is None or i in keep:
                        yield row
                    i += 1

    out = {s: rows(p) for s, p in files.items() if p}
    if set(out) == {"train"} and args.val_fraction + args.test_fraction > 0:
        n = sum(pq.ParquetFile(p).metadata.num_rows for p in files["train"])
        parts = split_indices(n, args.val_fraction, args.test_fraction, args.seed)
        out = {s: rows(files["train"], set(idx)) for s, idx in parts.items() if idx}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder (created)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset", help="HF dataset name, e.g. segments/sidewalk-semantic (uses `datasets`)")
    src.add_argument("--parquet", nargs="+", metavar="[SPLIT=]FILE",
                     help="local parquet files (uses pyarrow); SPLIT is train (default), val or test")
    p.add_argument("--id2label", help="id2label.json to use (default with --dataset: the dataset repo's)")
    p.add_argument("--class-map", help="collapse classes on export (JSON, see docs/datasets.md)")
    p.add_argument("--image-column", default="pixel_values")
    p.add_argument("--label-column", default="label")
    p.add_argument("--val-fraction", type=float, default=0.1, help="of a train-only dataset (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="of a train-only dataset (default 0.2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the split (default 1, as the HF tutorial)")
    args = p.parse_args(argv)
    try:
        if args.id2label:
            with open(args.id2label) as f:
                id2label = {int(k): v for k, v in json.load(f).items()}
        elif args.dataset:
            id2label = hub_id2label(args.dataset)
        else:
            raise ExportError("--parquet needs --id2label FILE (the dataset repo's id2label.json)")
        lut = None
        if args.class_map:
            lut, id2label = read_class_map(args.class_map, id2label)
        splits = from_datasets(args) if args.dataset else from_parquet(args)
        write_id2label(args.out_dir, id2label)
        for split, rows in splits.items():
            n = export_rows(rows, args.out_dir, split, len(id2label), args.image_column, args.label_column, lut)
            print(f"{split}: {n} images -> {os.path.join(args.out_dir, split)}")
        print(f"{len(id2label)} classes -> {os.path.join(args.out_dir, 'id2label.json')}")
    except ExportError as e:
        print(f"export_hf_dataset: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
