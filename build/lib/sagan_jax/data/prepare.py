r"""Prepares a TFDS dataset once so that training can read it.

  python -m sagan_jax.data.prepare imagenet2012 [--data_dir DIR] [--manual_dir DIR]
  python -m sagan_jax.data.prepare cifar10 --data_dir gs://BUCKET/tfds

The same as `tfds build NAME` (whose command line, in tensorflow-datasets
4.9.x, also needs apache-beam installed), with the project's requirements
only. DIR defaults to TFDS_DATA_DIR, then ~/tensorflow_datasets; it may be a
gs:// bucket. imagenet2012 reads ILSVRC2012_img_train.tar and
ILSVRC2012_img_val.tar from --manual_dir (default DIR/downloads/manual/) and
takes hours; other datasets are downloaded (internet needed). See docs/data.md.

The archive names, the ImageNet name check and the data_dir fallback are
the TFDS reader's (`sagan_jax.data.tfds_source`), so both agree.
"""

from __future__ import annotations

import argparse
import sys

from sagan_jax.data import tfds_source
from sagan_jax.errors import DataError
from sagan_jax.data.transforms import import_tf


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
  """Downloads/converts `name` into data_dir; returns the dataset's directory."""
  import_tf()  # hides accelerators from TF before tfds loads it
  import tensorflow_datasets as tfds
  data_dir = tfds_source.tfds_data_dir(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f"{name!r} is not a TFDS dataset; see "
                    "https://www.tensorflow.org/datasets/catalog") from e
  manual = (manual_dir or tfds_source.manual_dir(data_dir)).rstrip("/")
  if tfds_source.is_imagenet(name):
    missing = tfds_source.missing_imagenet_tars(manual)
    if missing:
      train_tar, val_tar = tfds_source.IMAGENET_TARS
      raise DataError(
          f"{' and '.join(missing)} not found in {manual}/. Download {train_tar} and "
          f"{val_tar} from https://image-net.org (registration required) and put them "
          "there, or pass --manual_dir.")
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
