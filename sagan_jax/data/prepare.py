r"""Prepares a TFDS dataset once so that training can read it.

  python -m sagan_jax.data.prepare imagenet2012 [--data_dir DIR] [--manual_dir DIR]
  python -m sagan_jax.data.prepare cifar10 --data_dir gs://BUCKET/tfds

The same as `tfds build NAME` (whose command line, in tensorflow-datasets
4.9.x, also needs apache-beam installed), with the project's requirements
only. DIR defaults to TFDS_DATA_DIR, then ~/tensorflow_datasets; it may be a
gs:// bucket. imagenet2012 reads ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar from --manual_dir (default DIR/downloads/manual/) and
takes hours; other datasets are downloaded (internet needed). See docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from sagan_jax.data.errors import DataError

IMAGENET_TARS = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
  """Downloads/converts `name` into data_dir; returns the dataset's directory."""
  from sagan_jax.data.tfds_source import import_tf
  tf = import_tf()
  import tensorflow_datasets as tfds
  data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"{name!r} is not a TFDS dataset; see "
                    "https://www.tensorflow.org/datasets/catalog") from e
  root = (data_dir or tfds.core.constants.DATA_DIR).rstrip("/")
  manual = (manual_dir or f"{root}/downloads/manual").rstrip("/")
  if name.split("/")[0].split(":")[0] == "imagenet2012":
    missing = [t for t in IMAGENET_TARS if not tf.io.gfile.exists(f"{manual}/{t}")]
    if missing:
      raise DataError(
          f"{' and '.join(missing)} not found in {manual}/. Download "
          f"{IMAGENET_TARS[0]} and {IMAGENET_TARS[1]} from https://image-net.org "
          "(registration required) and put them there, or pass --manual_dir.")
  config = tfds.download.DownloadConfig(manual_dir=manual)
  builder.download_and_prepare(download_config=config)
  return builder.data_dir


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("name", help="TFDS name, e.g. imagenet2012, imagenet_resized/64x64, cifar10")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data_dir (default: TFDS_DATA_DIR, then ~/tensorflow_datasets)")
  p.add_argument("--manual_dir", default=None,
                 help="folder with manually downloaded files (default DATA_DIR/downloads/manual)")
  args = p.parse_args(argv)
  try:
    where = prepare(args.name, args.data_dir, args.manual_dir)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"prepared {args.name} in {where}; train with --config.data.name={args.name}"
        + (f" --config.data.dir={args.data_dir}" if args.data_dir else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
