"""Class tables: the shipped ones, your own, their checks, and masks read and written through them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dataset.classes import DEEPGLOBE, INRIA, load_class_table, table_from_dict
from dataset.io import read_mask, write_mask_png
from utils.errors import ConfigError, DataError


def _table(n: int, **extra) -> dict:
    colours = [[(37 * i) % 256, (91 * i + 17) % 256, (53 * i + 101) % 256] for i in range(n)]
    return {"name": f"t{n}", "classes": [{"name": f"c{i}", "colour": c} for i, c in enumerate(colours)], **extra}


def test_shipped_tables() -> None:
    assert DEEPGLOBE.n_class == 7 and DEEPGLOBE.names[0] == "unknown" and DEEPGLOBE.unscored == 0
    assert DEEPGLOBE.colours.tolist()[1] == [0, 255, 255]
    assert INRIA.names == ("background", "building") and INRIA.unscored == 0
    assert INRIA.colours.tolist() == [[0, 0, 0], [255, 255, 255]]
    assert INRIA.record() == {"name": "inria", "classes": [{"name": "background", "colour": [0, 0, 0]},
                                                           {"name": "building", "colour": [255, 255, 255]}],
                              "unscored": "background"}


@pytest.mark.parametrize("values", [[0, 1], [0, 255], [0, 1, 255]])
def test_inria_masks_read_as_0_1_or_0_255(tmp_path, values) -> None:
    raw = np.array(values * 8, dtype=np.uint8).reshape(-1, len(values))
    path = str(tmp_path / "m.png")
    Image.fromarray(raw).save(path)
    assert read_mask(path, raw.shape, INRIA).numpy().tolist() == (raw > 0).astype(np.uint8).tolist()


def test_inria_mask_with_another_value_is_an_error(tmp_path) -> None:
    path = str(tmp_path / "m.png")
    Image.fromarray(np.array([[0, 128], [255, 1]], dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match=r"m\.png .*no class \(first: 128\).*0\.\.1, 255 for building"):
        read_mask(path, None, INRIA)


def test_deepglobe_grey_255_stays_an_error(tmp_path) -> None:
    # Inria's alias is the Inria table's: a DeepGlobe index mask holding 255 is still refused.
    path = str(tmp_path / "m.png")
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(path)
    with pytest.raises(DataError, match="no class"):
        read_mask(path, None, DEEPGLOBE)


@pytest.mark.parametrize("n", [3, 12])
def test_own_table_colour_masks_round_trip(tmp_path, n) -> None:
    table = table_from_dict(_table(n), "mine.json")
    index = (np.arange(12 * 10).reshape(12, 10) % n).astype(np.uint8)
    path = str(tmp_path / "mask.png")
    write_mask_png(path, index, table)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    assert rgb.reshape(-1, 3).tolist() == table.colours[index.reshape(-1)].tolist()
    assert read_mask(path, index.shape, table).numpy().tolist() == index.tolist()
    with pytest.raises(DataError, match="outside the"):
        read_mask(path, index.shape, table_from_dict(_table(n + 1) | {"classes": _table(n + 1)["classes"][1:]},
                                                     "other.json"))


def test_palette_png_judged_by_the_table(tmp_path) -> None:
    table = table_from_dict(_table(3), "mine.json")
    image = Image.fromarray(np.array([[0, 1], [2, 1]], dtype=np.uint8), mode="P")
    image.putpalette([int(v) for v in table.colours[[2, 0, 1]].reshape(-1)])  # entry 0 shows class 2's colour
    path = str(tmp_path / "p.png")
    image.save(path)
    assert read_mask(path, None, table).numpy().tolist() == [[2, 0], [1, 0]]


def test_unscored_and_aliases_from_json(tmp_path) -> None:
    path = tmp_path / "t.json"
    path.write_text(json.dumps(_table(3, unscored="c1", index_aliases={"200": "c2"})))
    table = load_class_table(str(path))
    assert table.unscored == 1 and table.index_values(np.array([0, 200]), "x", "L").tolist() == [0, 2]
    no_unscored = table_from_dict(_table(3, unscored=None), "t.json")
    assert no_unscored.unscored is None


def test_the_ignore_value_reads_as_unlabelled(tmp_path) -> None:
    from utils.labels import IGNORE_INDEX

    table = table_from_dict(_table(3, ignore=250), "t.json")
    assert table.ignore == 250 and table.ignore_index == IGNORE_INDEX and table.record()["ignore"] == 250
    assert table.index_values(np.array([0, 250, 2]), "x", "L").tolist() == [0, IGNORE_INDEX, 2]
    with pytest.raises(DataError, match="250 for unlabelled"):
        table.index_values(np.array([0, 251]), "m.png", "L")
    assert DEEPGLOBE.ignore_index is None and "ignore" not in DEEPGLOBE.record()
    with pytest.raises(DataError):  # no ignore value in the shipped tables: 255 is no DeepGlobe class
        DEEPGLOBE.index_values(np.array([0, 255]), "m.png", "L")
    picture = table.label_to_colour(np.array([[0, IGNORE_INDEX]]))
    assert picture.tolist() == [[table.colours[0].tolist(), [128, 128, 128]]]
    import torch

    assert table.label_to_colour(torch.tensor([[IGNORE_INDEX, 1]])).tolist() == [[[128, 128, 128],
                                                                                   table.colours[1].tolist()]]
    path = str(tmp_path / "m.png")
    Image.fromarray(np.array([[0, 250], [1, 2]], dtype=np.uint8)).save(path)
    assert read_mask(path, (2, 2), table).numpy().tolist() == [[0, IGNORE_INDEX], [1, 2]]


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.update(classes=t["classes"][:1]), "1 classes; a table needs 2 to 255"),
    (lambda t: t["classes"][1].update(name="c0"), "'c0' appears twice"),
    (lambda t: t["classes"][1].update(colour=t["classes"][0]["colour"]), "share the colour"),
    (lambda t: t["classes"][1].update(colour=[0, 0, 256]), "not three integers 0..255"),
    (lambda t: t["classes"][1].update(colour="red"), "not three integers 0..255"),
    (lambda t: t.update(unscored="nope"), "`unscored` names 'nope'"),
    (lambda t: t.update(index_aliases={"1": "c0"}), "from 3 to 255"),
    (lambda t: t.update(ignore=2), "`ignore` must be a mask value from 3 to 255"),
    (lambda t: t.update(ignore="255"), "`ignore` must be a mask value"),
    (lambda t: t.update(ignore=200, index_aliases={"200": "c1"}), "also an `index_aliases` value"),
    (lambda t: t.update(classes={"a": 1}), "a list `classes`"),
])
def test_bad_tables_are_one_line_errors(change, message) -> None:
    raw = _table(3)
    change(raw)
    with pytest.raises(ConfigError, match="class table mine.json: .*" + message.replace("(", r"\(").replace(")", r"\)")):
        table_from_dict(raw, "mine.json")


def test_unreadable_table_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_class_table(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_class_table(str(bad))
