"""TensorFlow on the CPU only, and the image transforms of the tf.data pipelines.

`import_tf()` is how every module here gets TensorFlow: it hides GPUs and
TPUs from it first, so the input pipeline never takes the accelerators'
memory (JAX owns them).

Transforms (`train_transform`, `eval_transform`; TF functions usable inside
tf.data.map):

  train ('random', default): a square crop whose side is the image's short
        side, at a uniformly random position along the long side, resized to
        R x R; then a horizontal flip with probability 1/2 when
        config.data.random_flip. This is the official SAGAN preprocessing
        (square crop of the short side, bilinear resize to 128) with the crop
        position randomised, as BigGAN-PyTorch's RandomCropLongEdge.
  train ('center', config.data.train_crop='center'): the official code's
        exact choice (it trained on a pre-made centre-cropped 128x128 copy).
  eval: the centre square crop of the short side, resized to R x R.

Resizing is bilinear with antialiasing (like PIL's bilinear, which made the
official 128x128 copy), rounded to uint8. Square images of size R pass
through unchanged (CIFAR-10 at 32, imagenet_resized/64x64 at 64). Encoded
JPEGs are decoded only inside the crop window.
"""

from __future__ import annotations

from absl import logging


def import_tf():
  """TensorFlow with GPUs and TPUs hidden from it (JAX owns the accelerators), imported quietly."""
  from sagan_jax import tf_setup
  return tf_setup.import_tf()


def _square_window(tf, height, width, crop: str, seed):
  """(y, x, side) of the square crop with side = short side."""
  side = tf.minimum(height, width)
  if crop == "center":
    return (height - side) // 2, (width - side) // 2, side
  sy, sx = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  y = tf.random.stateless_uniform([], sy, minval=0, maxval=height - side + 1, dtype=tf.int32)
  x = tf.random.stateless_uniform([], sx, minval=0, maxval=width - side + 1, dtype=tf.int32)
  return y, x, side


def _to_rgb(tf, image):
  image = tf.convert_to_tensor(image)
  if image.shape.rank == 2:
    image = image[..., None]
  if image.dtype != tf.uint8:
    image = tf.image.convert_image_dtype(image, tf.uint8, saturate=True)
  c = image.shape[-1]
  if c == 1:
    return tf.image.grayscale_to_rgb(image)
  if c == 3:
    return image
  if c == 4 or c == 2:  # drop alpha
    return tf.image.grayscale_to_rgb(image[..., :1]) if c == 2 else image[..., :3]
  ch = tf.shape(image)[-1]  # unknown channel count
  return tf.cond(ch >= 3, lambda: image[..., :3],
                 lambda: tf.tile(image[..., :1], [1, 1, 3]))


def _decode_square(tf, image, crop: str, seed, encoded: bool):
  """Decoded uint8 RGB square crop (short side) of an encoded or decoded image."""
  if not encoded:
    image = _to_rgb(tf, image)
    shape = tf.shape(image)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return image[y:y + side, x:x + side]

  def jpeg():  # decode only the crop window
    shape = tf.image.extract_jpeg_shape(image)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return tf.image.decode_and_crop_jpeg(image, tf.stack([y, x, side, side]), channels=3)

  def other():  # PNG, GIF (first frame), BMP, WebP
    img = tf.io.decode_image(image, channels=3, expand_animations=False)
    shape = tf.shape(img)
    y, x, side = _square_window(tf, shape[0], shape[1], crop, seed)
    return img[y:y + side, x:x + side]

  return tf.cond(tf.io.is_jpeg(image), jpeg, other)


def _resize(tf, image, resolution: int):
  image = tf.image.resize(image, [resolution, resolution], method="bilinear", antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(image, [resolution, resolution, 3])


def train_transform(image, seed, resolution: int, *, random_flip: bool = True,
                    crop: str = "random", encoded: bool = True):
  """Training transform of one image (a TF function usable inside tf.data.map).

  image: encoded bytes (JPEG/PNG/GIF/BMP/WebP) or, with encoded=False, a
    decoded [H, W, C] tensor. seed: int32/int64 [2] stateless seed.
  Returns uint8 [resolution, resolution, 3].
  """
  tf = import_tf()
  seed = tf.cast(seed, tf.int64)
  s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  out = _resize(tf, _decode_square(tf, image, crop, s_crop, encoded), resolution)
  if random_flip:
    flip = tf.random.stateless_uniform([], s_flip) < 0.5
    out = tf.cond(flip, lambda: tf.reverse(out, [1]), lambda: out)
  return out


def eval_transform(image, resolution: int, *, encoded: bool = True):
  """Evaluation transform: centre square crop of the short side, resize (uint8)."""
  tf = import_tf()
  return _resize(tf, _decode_square(tf, image, "center", None, encoded), resolution)
