#!/usr/bin/env python
"""Localise query images against a saved database with a deployed image-only student.

    # database from a preprocessed dataset's evaluation rows of one run (images + manifest positions)
    python scripts/localize.py build --checkpoint student.pt --dataset data/synthetic-default \
        --run 2014-11-18-13-20-12 --out db.npz
    # database from a folder of images and a CSV (image,northing,easting; image relative to the folder)
    python scripts/localize.py build --checkpoint student.pt --images db_images/ --positions db.csv --out db.npz
    # query a folder of images: top-k matches with positions and distances (printed; --out writes a CSV)
    python scripts/localize.py query --checkpoint student.pt --database db.npz --queries query_images/ --k 3
    # export the student to ONNX + TorchScript and check parity (then --onnx student.onnx in build / query)
    python scripts/localize.py export --checkpoint student.pt --out deploy/

--onnx runs an exported model with onnxruntime instead of --checkpoint. See docs/evaluation.md.
"""

import argparse
import csv
import io
import json
import sys
from pathlib import Path


def _localizer(args):
    from crossmodal.deploy import Localizer

    if bool(args.checkpoint) == bool(args.onnx):
        raise SystemExit("give exactly one of --checkpoint and --onnx")
    kw = {"batch_size": args.batch_size, "resize": args.resize}
    if args.onnx:
        return Localizer.from_onnx(args.onnx, metric=args.metric, index=args.index, threads=args.threads, **kw)
    return Localizer.from_checkpoint(args.checkpoint, device=args.device, metric=args.metric, index=args.index, **kw)


def _read_positions(csv_path: Path, folder: Path):
    import numpy as np

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    missing = {"image", "northing", "easting"} - set(rows[0] if rows else {})
    if not rows or missing:
        raise SystemExit(f"{csv_path}: needs a header with image,northing,easting and one row per image "
                         f"(missing: {sorted(missing) or 'rows'})")
    return [folder / r["image"] for r in rows], np.array([[float(r["northing"]), float(r["easting"])] for r in rows])


def _dataset_rows(dataset: Path, run: str | None, split: str):
    from crossmodal.data import PairedPlaceDataset

    ds = PairedPlaceDataset(dataset, split, modalities=("image",))
    keep = [i for i in range(len(ds)) if run is None or ds.runs[i] == run]
    if not keep:
        runs = sorted(set(ds.runs))
        raise SystemExit(f"{dataset}: no {split} rows for run {run!r}; runs: {', '.join(runs)}")
    return [ds.image_paths[i] for i in keep], ds.positions[keep], [str(ds.sample_ids[i]) for i in keep]


def cmd_build(args) -> int:
    loc = _localizer(args)
    ids = None
    if args.dataset:
        images, positions, ids = _dataset_rows(args.dataset, args.run, args.split)
    elif args.images and args.positions:
        images, positions = _read_positions(args.positions, args.images)
    else:
        raise SystemExit("give --dataset (with --run) or --images with --positions")
    n = loc.add_database(images, positions, ids=ids, progress=not args.quiet)
    loc.save_database(args.out)
    print(f"database: {n} entries, {loc.descriptor_dim}-d, {loc.metric}, {loc.index_spec.kind} -> {args.out}")
    return 0


def cmd_query(args) -> int:
    from crossmodal.deploy import list_images

    loc = _localizer(args)
    loc.load_database(args.database)
    queries = [args.queries] if args.queries.is_file() else list_images(args.queries)
    if not queries:
        raise SystemExit(f"{args.queries}: no images (png, jpg, ...)")
    results = loc.query_many(queries, k=args.k, progress=not args.quiet)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["query", "rank", "id", "northing", "easting", "distance"])
    for q, matches in zip(queries, results):
        best = matches[0]
        print(f"{q.name}: best {best.id} at ({best.position[0]:.2f}, {best.position[1]:.2f}), "
              f"distance {best.distance:.4g}" + "".join(f"; #{m.rank} {m.id} {m.distance:.4g}" for m in matches[1:]))
        for m in matches:
            writer.writerow([str(q), m.rank, m.id, f"{m.position[0]:.3f}", f"{m.position[1]:.3f}", f"{m.distance:.6g}"])
    if args.out:
        from preprocessing.io import atomic_write_text

        atomic_write_text(args.out, buf.getvalue())
        print(f"matches -> {args.out}")
    return 0


def cmd_export(args) -> int:
    from crossmodal.deploy import export_student

    result = export_student(args.checkpoint, args.out, formats=args.formats, threads=args.threads)
    print(json.dumps({k: result[k] for k in ("onnx", "torchscript", "parity") if k in result}, indent=1))
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (one usage line and exit code 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def model_args(p, onnx=True):
        p.add_argument("--checkpoint", type=Path, help="student checkpoint (a teacher is refused)")
        if onnx:
            p.add_argument("--onnx", type=Path, help="ONNX export of a student (onnxruntime instead of PyTorch)")
            p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
            p.add_argument("--index", default="flat", choices=["flat", "ivf", "hnsw"])
            p.add_argument("--device", default="cpu")
            p.add_argument("--batch-size", type=positive_int, default=32)
            p.add_argument("--resize", action="store_true", help="resize images of another size (else refused)")
            p.add_argument("--quiet", action="store_true")
        p.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")

    b = sub.add_parser("build", help="embed database images and save the database")
    model_args(b)
    b.add_argument("--dataset", type=Path, help="preprocessed dataset folder (manifest.parquet)")
    b.add_argument("--run", help="the run whose rows form the database (default: all runs of the split)")
    b.add_argument("--split", default="eval")
    b.add_argument("--images", type=Path, help="folder of database images")
    b.add_argument("--positions", type=Path, help="CSV image,northing,easting (image relative to --images)")
    b.add_argument("--out", type=Path, required=True, help="database file to write (.npz)")
    b.set_defaults(fn=cmd_build)

    q = sub.add_parser("query", help="localise query images against a saved database")
    model_args(q)
    q.add_argument("--database", type=Path, required=True)
    q.add_argument("--queries", type=Path, required=True, help="a query image or a folder of them")
    q.add_argument("--k", type=positive_int, default=3, help="matches per query (at least 1)")
    q.add_argument("--out", type=Path, help="write the matches as CSV here")
    q.set_defaults(fn=cmd_query)

    e = sub.add_parser("export", help="export the student to ONNX and TorchScript, with parity checks")
    model_args(e, onnx=False)
    e.add_argument("--out", type=Path, required=True, help="output folder")
    e.add_argument("--formats", nargs="+", default=["onnx", "torchscript"], choices=["onnx", "torchscript"])
    e.set_defaults(fn=cmd_export)

    args = parser.parse_args(argv)
    if args.command == "export" and not args.checkpoint:
        parser.error("export needs --checkpoint")
    from crossmodal.launch import user_errors

    try:  # user errors (a teacher or a damaged checkpoint, a bad database or image...): one `error:` line, code 2
        with user_errors():
            return args.fn(args)
    except SystemExit as exc:
        return exc.code

if __name__ == "__main__":
    sys.exit(main())
