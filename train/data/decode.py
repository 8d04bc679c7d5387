"""Image decoding to HWC uint8 RGB, with JPEG DCT-domain downscaling when the target allows it.

libjpeg-turbo (through simplejpeg) can decode a JPEG at k/8 of its size for a fraction of the
cost. `decode_rgb(data, min_size=(h, w))` returns the smallest such scale that is still at least
`min_size`, so a caller that asks for the size its crop needs loses no detail it would keep.
"""

import io

import numpy as np
import simplejpeg
from PIL import Image

JPEG_MAGIC = b"\xff\xd8"

RawImage = bytes | np.ndarray


def image_size(data: RawImage) -> tuple[int, int]:
    """(height, width) of an encoded image, read from its header only (or of an HWC / HW array)."""
    if isinstance(data, np.ndarray):
        return int(data.shape[0]), int(data.shape[1])
    if not data:
        raise ValueError("zero-byte image")
    if data[:2] == JPEG_MAGIC:
        try:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return h, w
        except ValueError:
            pass  # e.g. CMYK, which libjpeg-turbo's header call refuses; PIL knows it
    with Image.open(io.BytesIO(data)) as im:
        w, h = im.size
    return h, w


def _pil_rgb(data: bytes, min_size: tuple[int, int]) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        if min_size != (0, 0) and im.format == "JPEG":
            im.draft("RGB", (min_size[1], min_size[0]))  # PIL picks a scale >= the requested size
        return np.asarray(im.convert("RGB"))


def decode_rgb(data: RawImage, *, min_size: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Decode to an (H, W, 3) uint8 array, downscaled in the DCT domain to no less than `min_size`.

    Raises on corrupt, truncated or empty data (simplejpeg is strict about a premature end of data).
    """
    if isinstance(data, np.ndarray):
        if data.ndim == 2:
            return np.repeat(data[:, :, None], 3, axis=2)
        return data
    if not data:
        raise ValueError("zero-byte image")
    if data[:2] == JPEG_MAGIC:
        try:
            # min_factor=2: only whole-octave reductions; libjpeg-turbo's k/8 scales between 1 and 2
            # cost more than a full decode.
            return simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_height=min_size[0], min_width=min_size[1], min_factor=2
            )
        except ValueError as exc:
            # libjpeg-turbo refuses CMYK/YCCK JPEGs (a few in ImageNet); PIL decodes them. Corrupt
            # data fails in PIL as well and is reported with simplejpeg's message.
            try:
                return _pil_rgb(data, min_size)
            except Exception:
                raise exc from None
    return _pil_rgb(data, min_size)


def decode_once_unless_jpeg(data: RawImage) -> RawImage:
    """JPEGs stay encoded (their decode can be reduced to the crop's needs); other formats have no
    reduced decode, so they are decoded here once instead of being opened for their size and again
    for their pixels."""
    if isinstance(data, np.ndarray) or data[:2] == JPEG_MAGIC:
        return data
    return decode_rgb(data)
