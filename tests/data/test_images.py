"""lrpo.data.images: every common image flavour becomes RGB uint8 HxWx3; bad files name themselves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lrpo.data.images import (
    ImageLoadError,
    list_images,
    load_many,
    load_rgb,
    resize_square,
    save_rgb,
    to_tensor,
    to_uint8,
)

EXIF_ORIENTATION = 0x0112


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _truncated_jpeg(path) -> None:
    # noise does not compress, so half the bytes cuts the entropy-coded scan in the middle
    Image.fromarray(_noise(64, 64)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ---------------------------------------------------------------------------------------------
# formats
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext, kwargs", [(".png", {}), (".webp", {"lossless": True}), (".bmp", {})])
def test_lossless_formats_round_trip_exactly(tmp_path, ext, kwargs):
    image = _noise(12, 20)
    path = tmp_path / f"a{ext}"
    Image.fromarray(image).save(path, **kwargs)
    loaded = load_rgb(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (12, 20, 3)
    np.testing.assert_array_equal(loaded, image)


@pytest.mark.parametrize("ext, kwargs", [(".jpg", {"quality": 95}), (".webp", {"quality": 90})])
def test_lossy_formats_keep_a_flat_colour(tmp_path, ext, kwargs):
    # a flat colour only suffers the YCbCr round trip: measured max error 1 level for both
    # formats; 3 levels leaves room for other libjpeg/libwebp builds while still catching a
    # channel swap (200 vs 90) or a BGR/RGB mix-up.
    image = np.zeros((16, 16, 3), np.uint8)
    image[:] = (200, 30, 90)
    path = tmp_path / f"flat{ext}"
    Image.fromarray(image).save(path, **kwargs)
    loaded = load_rgb(path)
    assert loaded.shape == (16, 16, 3)
    assert np.abs(loaded.astype(int) - image).max() <= 3


def test_exif_orientation_6_is_applied(tmp_path):
    # Orientation 6 means "rotate 90 degrees clockwise to display". Stored 8 high x 16 wide with a
    # red left half and a blue right half; turned clockwise, the left edge becomes the top, so the
    # loaded image is 16 high x 8 wide, red on top and blue below.
    stored = np.zeros((8, 16, 3), np.uint8)
    stored[:, :8] = (255, 0, 0)
    stored[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)

    loaded = load_rgb(path)
    assert loaded.shape == (16, 8, 3)
    # block centres, away from JPEG ringing at the colour edge; tolerance as for flat colours
    assert np.abs(loaded[3, 4].astype(int) - (255, 0, 0)).max() <= 3
    assert np.abs(loaded[12, 4].astype(int) - (0, 0, 255)).max() <= 3
    # exactly the decoded stored pixels turned clockwise (a transpose is lossless)
    with Image.open(path) as raw:
        decoded = np.asarray(raw.convert("RGB"))
    np.testing.assert_array_equal(loaded, np.rot90(decoded, k=-1))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    gray = np.array([[0, 17, 128], [200, 254, 255]], np.uint8)
    path = tmp_path / "gray.png"
    img = Image.fromarray(gray)
    assert img.mode == "L"
    img.save(path)
    loaded = load_rgb(path)
    assert loaded.shape == (2, 3, 3)
    for c in range(3):
        np.testing.assert_array_equal(loaded[..., c], gray)


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(10, 20, 30, 0), (10, 20, 30, 255), (0, 0, 0, 128)])
    path = tmp_path / "cutout.png"
    img.save(path)
    loaded = load_rgb(path)
    # transparent -> white; opaque -> its colour; black at alpha 128 over white:
    # 0 * 128/255 + 255 * (1 - 128/255) = 127.
    np.testing.assert_array_equal(loaded[0], [[255, 255, 255], [10, 20, 30], [127, 127, 127]])


def test_16bit_png_scales_by_type_range(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    img.save(path)
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")  # really stored as 16-bit
    loaded = load_rgb(path)
    # round(v / 65535 * 255): 0 -> 0; 1000 -> 3.891 -> 4; 32768 -> 127.502 -> 128; 65535 -> 255
    np.testing.assert_array_equal(loaded[..., 0], [[0, 4, 128, 255]])
    np.testing.assert_array_equal(loaded[..., 0], loaded[..., 2])


# ---------------------------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------------------------
def test_truncated_jpeg_raises_naming_the_file(tmp_path):
    path = tmp_path / "half.jpg"
    _truncated_jpeg(path)
    with pytest.raises(ImageLoadError) as info:
        load_rgb(path)
    assert info.value.path == str(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_text_file_named_jpg_raises_naming_the_file(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageLoadError, match="not a recognised image format") as info:
        load_rgb(path)
    assert info.value.path == str(path) and str(path) in str(info.value)


@pytest.mark.parametrize("kind, reason", [("missing", "no such file"), ("empty", "empty file")])
def test_missing_and_empty_files(tmp_path, kind, reason):
    path = tmp_path / "face.png"
    if kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=reason):
        load_rgb(path)


def test_load_many_skip_bad_lists_failures(tmp_path):
    good = tmp_path / "good.png"
    save_rgb(good, _noise(4, 4))
    text = tmp_path / "x.jpg"
    text.write_text("nope")
    half = tmp_path / "half.jpg"
    _truncated_jpeg(half)

    with pytest.raises(ImageLoadError):
        load_many([good, text, half])
    loaded, bad = load_many([good, text, half], skip_bad=True)
    assert [p for p, _ in loaded] == [good]
    assert [e.path for e in bad] == [str(text), str(half)]


# ---------------------------------------------------------------------------------------------
# listing
# ---------------------------------------------------------------------------------------------
def test_list_images_folder_is_sorted_and_filters_extensions(tmp_path):
    for name in ("b.png", "a.JPG", "c.webp"):
        (tmp_path / name).write_bytes(b"x")  # listing does not decode
    (tmp_path / "notes.txt").write_text("not listed")
    (tmp_path / "sub.png").mkdir()  # a folder with an image-like name is not a file
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.webp"]


def test_list_images_file_list_with_relative_paths(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    save_rgb(images / "one.png", _noise(4, 4, seed=1))
    save_rgb(images / "two.png", _noise(4, 4, seed=2))
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "train.txt"
    absolute = (images / "two.png").resolve()
    listing.write_text(f"# faces for training\n\n../images/one.png\n  {absolute}  \n")

    paths = list_images(listing)
    # relative entries resolve against the list file's folder, not the working directory
    assert paths == [lists / "../images/one.png", absolute]
    np.testing.assert_array_equal(load_rgb(paths[0]), _noise(4, 4, seed=1))


def test_list_images_errors_name_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images found"):
        list_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        list_images(tmp_path / "missing")
    empty_list = tmp_path / "empty.txt"
    empty_list.write_text("# nothing\n\n")
    with pytest.raises(FileNotFoundError, match="names no images"):
        list_images(empty_list)
    # an image where a folder or list is expected (was: read as text, 'utf-8' codec can't decode)
    face = tmp_path / "face.jpg"
    face.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match=r"face.jpg is an image; expected a folder of images or a text file"):
        list_images(face)
    binary = tmp_path / "list.dat"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"list.dat is not a text file listing image paths"):
        list_images(binary)


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------
def test_resize_square_shapes_and_identity():
    image = _noise(30, 20)
    assert resize_square(image, 16).shape == (16, 16, 3)  # shrink (area)
    assert resize_square(image, 48).shape == (48, 48, 3)  # grow (bicubic)
    square = _noise(16, 16)
    assert resize_square(square, 16) is square  # no resampling at the target size


def test_resize_square_area_filter_averages_blocks():
    # 2x2 blocks of values (0, 100, 100, 200) averaged by INTER_AREA -> 100 everywhere
    image = np.zeros((4, 4, 3), np.uint8)
    image[0::2, 1::2] = 100
    image[1::2, 0::2] = 100
    image[1::2, 1::2] = 200
    np.testing.assert_array_equal(resize_square(image, 2), np.full((2, 2, 3), 100, np.uint8))


def test_to_tensor_and_back():
    image = np.array([[[0, 51, 255]]], np.uint8)
    t = to_tensor(image)
    assert t.dtype == torch.float32 and t.shape == (3, 1, 1)
    # 51 / 255 = 0.2 exactly in decimal; float32 rounding only
    torch.testing.assert_close(t.flatten(), torch.tensor([0.0, 0.2, 1.0]), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(to_uint8(t), image)
    noise = _noise(5, 7)
    np.testing.assert_array_equal(to_uint8(to_tensor(noise)), noise)
