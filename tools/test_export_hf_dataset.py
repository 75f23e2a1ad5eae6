#!/usr/bin/python3
"""Tests of tools/export_hf_dataset.py's core on rows made in memory with PIL (no pyarrow, no network).

    /usr/bin/python3 tools/test_export_hf_dataset.py

The parquet and `datasets` sources are thin wrappers that produce the same rows ({"bytes", "path"}
structs); they are not run here (pyarrow and datasets are not installable on this machine).
"""
import io
import json
import os
import sys
import tempfile
import unittest

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_hf_dataset as ex  # noqa: E402


def encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def rgb(h, w, seed):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


def ids(h, w, seed, n):
    a = np.random.RandomState(seed).randint(0, n, (h, w)).astype(np.uint8)
    a[0, :] = 255
    return a


def load(path):
    with Image.open(path) as im:
        im.load()
        return im


def row(img_bytes, lab_bytes):
    return {"pixel_values": {"bytes": img_bytes, "path": None}, "label": {"bytes": lab_bytes, "path": "x.png"}}


class ExportRows(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.out = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def read_label(self, split, stem):
        return np.asarray(load(os.path.join(self.out, split, "labels", stem + ".png")))

    def test_jpeg_and_png_images_are_copied_byte_for_byte_labels_written_as_8bit(self):
        jpg, png = encode(rgb(12, 20, 1), "JPEG"), encode(rgb(12, 20, 2), "PNG")
        la, lb = ids(12, 20, 3, 5), ids(12, 20, 4, 5)
        pal = Image.fromarray(lb, mode="P")
        pal.putpalette([v for i in range(256) for v in (i * 7 % 256, i * 13 % 256, i * 29 % 256)])
        n = ex.export_rows([row(jpg, encode(Image.fromarray(la, "L"), "PNG")), row(png, encode(pal, "PNG"))],
                           self.out, "train", num_labels=5)
        self.assertEqual(n, 2)
        with open(os.path.join(self.out, "train/images/000000.jpg"), "rb") as f:
            self.assertEqual(f.read(), jpg)
        with open(os.path.join(self.out, "train/images/000001.png"), "rb") as f:
            self.assertEqual(f.read(), png)
        np.testing.assert_array_equal(self.read_label("train", "000000"), la)
        np.testing.assert_array_equal(self.read_label("train", "000001"), lb)  # palette indices are the ids
        self.assertEqual(load(os.path.join(self.out, "train/labels/000001.png")).mode, "L")

    def test_other_formats_and_pil_cells_become_png(self):
        img = rgb(8, 8, 5)
        n = ex.export_rows([{"image": encode(img, "BMP"), "annotation": Image.fromarray(ids(8, 8, 6, 3))}], self.out,
                           "val", num_labels=3, image_column="image", label_column="annotation", start=7)
        self.assertEqual(n, 1)
        got = load(os.path.join(self.out, "val/images/000007.png"))
        np.testing.assert_array_equal(np.asarray(got), np.asarray(img))

    def test_corrupt_image_names_split_row_and_column(self):
        good = row(encode(rgb(6, 6, 1), "PNG"), encode(Image.fromarray(ids(6, 6, 1, 2)), "PNG"))
        bad = row(encode(rgb(6, 6, 1), "JPEG")[:40], good["label"]["bytes"])
        with self.assertRaisesRegex(ex.ExportError, r"split train, row 1 \(pixel_values\): cannot decode"):
            ex.export_rows([good, bad], self.out, "train", num_labels=2)

    def test_size_mismatch_names_row_and_both_sizes(self):
        r = row(encode(rgb(10, 16, 1), "PNG"), encode(Image.fromarray(ids(10, 15, 1, 2)), "PNG"))
        with self.assertRaisesRegex(ex.ExportError, r"split test, row 3: the label is 15x10 but the image is 16x10"):
            ex.export_rows([r], self.out, "test", num_labels=2, start=3)

    def test_colour_label_map_and_out_of_range_ids_are_errors(self):
        img = encode(rgb(4, 4, 1), "PNG")
        with self.assertRaisesRegex(ex.ExportError, r"row 0 \(label\): the label map has mode RGB"):
            ex.export_rows([row(img, encode(rgb(4, 4, 2), "PNG"))], self.out, "train", num_labels=2)
        lab = np.full((4, 4), 7, np.uint8)
        with self.assertRaisesRegex(ex.ExportError, r"row 0: label ids \[7\] are outside 0..4"):
            ex.export_rows([row(img, encode(Image.fromarray(lab), "PNG"))], self.out, "train", num_labels=5)

    def test_missing_column_and_missing_bytes(self):
        with self.assertRaisesRegex(ex.ExportError, r"no column 'label'"):
            ex.export_rows([{"pixel_values": b""}], self.out, "train", num_labels=2)
        with self.assertRaisesRegex(ex.ExportError, r"no bytes and no readable path"):
            ex.export_rows([row(None, b"")], self.out, "train", num_labels=2)


class ClassMaps(unittest.TestCase):
    ID2LABEL = {0: "unlabeled", 1: "road", 2: "sidewalk", 3: "person", 4: "car", 5: "tree"}

    def write(self, obj):
        f = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(obj, f)
        f.close()
        self.addCleanup(os.unlink, f.name)
        return f.name

    def test_unnamed_map_collapses_and_names_new_classes_after_old_ones(self):
        lut, names = ex.read_class_map(self.write({"1": 0, "2": 0, "3": 1, "4": 2, "5": 2}), self.ID2LABEL)
        self.assertEqual(names, {0: "road+sidewalk", 1: "person", 2: "car+tree"})
        self.assertEqual(lut[[0, 1, 2, 3, 4, 5, 255]].tolist(), [255, 0, 0, 1, 2, 2, 255])

        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        lab = np.array([[0, 1, 2], [3, 4, 5]], np.uint8)
        r = row(encode(rgb(2, 3, 1), "PNG"), encode(Image.fromarray(lab), "PNG"))
        ex.export_rows([r], tmp.name, "train", num_labels=len(names), lut=lut)
        got = np.asarray(load(os.path.join(tmp.name, "train/labels/000000.png")))
        np.testing.assert_array_equal(got, [[255, 0, 0], [1, 2, 2]])
        ex.write_id2label(tmp.name, names)
        with open(os.path.join(tmp.name, "id2label.json")) as f:
            self.assertEqual(json.load(f), {"0": "road+sidewalk", "1": "person", "2": "car+tree"})

    def test_named_map_and_bad_maps(self):
        lut, names = ex.read_class_map(self.write({"map": {"1": 0, "2": 0, "4": 1},
                                                   "id2label": {"0": "flat", "1": "vehicle"}}), self.ID2LABEL)
        self.assertEqual(names, {0: "flat", 1: "vehicle"})
        self.assertEqual(lut[[1, 2, 3, 4]].tolist(), [0, 0, 255, 1])
        with self.assertRaisesRegex(ex.ExportError, r"must be exactly 0..n-1"):
            ex.read_class_map(self.write({"1": 0, "2": 2}), self.ID2LABEL)
        with self.assertRaisesRegex(ex.ExportError, r"bad entry"):
            ex.read_class_map(self.write({"1": -1}), self.ID2LABEL)
        with self.assertRaisesRegex(ex.ExportError, r"name every new id"):
            ex.read_class_map(self.write({"map": {"1": 3}, "id2label": {"0": "a"}}), self.ID2LABEL)


class Splits(unittest.TestCase):
    def test_seeded_disjoint_and_complete(self):
        a = ex.split_indices(100, 0.1, 0.2, seed=1)
        self.assertEqual(a, ex.split_indices(100, 0.1, 0.2, seed=1))
        self.assertNotEqual(a, ex.split_indices(100, 0.1, 0.2, seed=2))
        self.assertEqual([len(a[s]) for s in ("train", "val", "test")], [70, 10, 20])
        self.assertEqual(sorted(a["train"] + a["val"] + a["test"]), list(range(100)))
        with self.assertRaises(ex.ExportError):
            ex.split_indices(10, 0.5, 0.5, seed=1)

    def test_parquet_without_id2label_is_an_error(self):
        self.assertEqual(ex.main(["/nonexistent-out", "--parquet", "x.parquet"]), 1)


if __name__ == "__main__":
    unittest.main()
