"""Dataset contract shared by every segmentation dataset, and the file readers it validates.

A dataset is a list of sample ids plus `load(index) -> (image, mask)`. `load` returns an RGB uint8
image (H, W, 3) and a uint8 class-index mask (H, W) where 255 means "ignore", and checks both
before handing them on, so a bad file fails with its name instead of as a shape error deep inside
an augmentation or a loss.
"""
import numpy as np

from deeplab.errors import DatasetError
from deeplab.metrics import IGNORE_LABEL


class SegmentationDataset:
    """Base class: subclasses set `ids`, `num_classes`, `class_names` (and `palette`, the class
    colours as PIL's flat [r, g, b, ...] list of 256 colours, for predicted masks) and implement
    `_read`.

    `_read(index)` returns `(image, mask, image_source, mask_source)`: the raw arrays and the names
    (file paths, or ids for generated data) used in error messages.
    """

    ids = ()
    num_classes = 0
    class_names = ()
    palette = None

    def __len__(self):
        return len(self.ids)

    def _read(self, index):
        raise NotImplementedError

    def describe(self, index):
        """Names sample `index` for messages: its id, and its files where the dataset has them
        (`image_paths`, `mask_paths`)."""
        sample = self.ids[index] if 0 <= index < len(self.ids) else index
        files = [paths[index] for paths in (getattr(self, "image_paths", None),
                                            getattr(self, "mask_paths", None))
                 if paths is not None and 0 <= index < len(paths)]
        return "sample %s%s" % (sample, " (%s)" % ", ".join(files) if files else "")

    def load(self, index):
        """Returns `(image, mask)` for sample `index`, validated (see module docstring).

        Raises:
            DatasetError: the image is not H x W x 3 uint8, the mask's size differs from the
                image's, or the mask holds values outside [0, num_classes) and 255.
        """
        index = range(len(self))[index]  # IndexError for out-of-range, supports negative indices
        image, mask, image_source, mask_source = self._read(index)
        image = np.asarray(image)
        mask = np.asarray(mask)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DatasetError(
                "image %s: expected an H x W x 3 uint8 array, got shape %s dtype %s"
                % (image_source, image.shape, image.dtype))
        if mask.ndim != 2:
            raise DatasetError("mask %s: expected a single-channel H x W label map, got shape %s"
                               % (mask_source, mask.shape))
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                "mask %s is %dx%d (HxW) but its image %s is %dx%d; they must be the same size"
                % (mask_source, mask.shape[0], mask.shape[1], image_source,
                   image.shape[0], image.shape[1]))
        return image, check_labels(mask, self.num_classes, mask_source)


def check_labels(mask, num_classes, source):
    """Returns `mask` as uint8 after checking every value is a class index or IGNORE_LABEL.

    Args:
        mask: integer or float array of labels (e.g. the double array some .mat files hold).
        num_classes: valid class indices are [0, num_classes).
        source: file name or id named in the error message.
    """
    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        bad = (mask >= num_classes) & (mask != IGNORE_LABEL)
    else:
        bad = ((mask < 0) | (mask >= num_classes) | (mask != np.round(mask))) \
            & (mask != IGNORE_LABEL)
    if bad.any():
        values = np.unique(mask[bad])
        shown = ", ".join(str(v) for v in values[:10].tolist())
        if len(values) > 10:
            shown += " ..."
        raise DatasetError(
            "mask %s holds label values %s; expected class indices 0..%d or %d (ignore)"
            % (source, shown, num_classes - 1, IGNORE_LABEL))
    return mask.astype(np.uint8, copy=False)


def read_image(path):
    """Decodes an image file into an RGB uint8 array (H, W, 3) with OpenCV.

    EXIF orientation is ignored so the pixels keep the stored layout, which is the layout the
    masks (read with PIL, which never rotates) were drawn on.

    Raises:
        DatasetError: the file is missing, unreadable, not an image, or damaged (see
            `image_damage`: OpenCV decodes a truncated JPEG without an error, greying the rest).
    """
    import cv2

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    damage = image_damage(data) if data else None
    if damage:
        raise DatasetError("image %s is damaged: %s; replace it, or remove its id from the "
                           "image list" % (path, damage))
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data else None
    if image is None:
        raise DatasetError("cannot read image %s: the file is missing, unreadable or not an image "
                           "format OpenCV can decode" % path)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def image_damage(data):
    """Why the bytes of a JPEG or PNG file are not a whole image (truncated), or None.

    A JPEG must end with its end-of-image marker (FF D9; zero padding after it is allowed), a
    PNG with its IEND chunk. Why not a decoder: OpenCV (libjpeg) decodes a truncated JPEG
    without an error, printing "Premature end of JPEG file" without the file's name and greying
    what is missing; PIL's full decode raises, but costs as much as the decode itself, where this
    check costs next to nothing (benchmarks/damaged_images.py: it caught every truncation point
    tried, as PIL's decode did). Damage inside a file that keeps its end (flipped bits) is left
    to the decoder, and to `deeplab check-data`, which decodes every image.
    """
    if data.startswith(_JPEG_START):
        if not data.rstrip(b"\0").endswith(_JPEG_END):
            return ("truncated JPEG (%d bytes, no end-of-image marker at its end)" % len(data))
    elif data.startswith(_PNG_START):
        if not data.endswith(_PNG_END):
            return "truncated PNG (%d bytes, no IEND chunk at its end)" % len(data)
    return None


# PNG modes whose pixel values are label indices; an RGB PNG holds colours, which would need a
# colour-to-class table we do not want to guess.
_INDEX_MODES = ("P", "L", "I", "I;16")


def read_png_mask(path):
    """Reads a label PNG (palette or greyscale) and returns its pixel INDICES as an array.

    VOC's SegmentationClass PNGs are palette images: the values are class indices and the palette
    only colours them for viewing, so they must not be converted to RGB (cv2.imread would).
    """
    from PIL import Image

    try:
        with Image.open(path) as png:
            mode = png.mode
            if mode not in _INDEX_MODES:
                raise DatasetError(
                    "mask %s is a %s image; expected a palette ('P') or greyscale ('L') PNG whose "
                    "pixel values are class indices (was it re-saved as colour?)" % (path, mode))
            return np.array(png)
    except DatasetError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # PIL reports corrupt files with these
        raise DatasetError("cannot read mask %s: %s" % (path, exc)) from exc


def read_sbd_mask(path):
    """Reads the label array of an SBD `cls/*.mat` file: `GTcls.Segmentation` (H, W)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises assorted types (ValueError, TypeError, OSError, ...)
        raise DatasetError("cannot read SBD mask %s: %s" % (path, exc)) from exc
    try:
        return np.asarray(mat["GTcls"][0]["Segmentation"][0])
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError("SBD mask %s has no GTcls.Segmentation field (found keys %s); expected "
                           "a file from SBD's cls/ folder"
                           % (path, sorted(k for k in mat if not k.startswith("__")))) from exc
