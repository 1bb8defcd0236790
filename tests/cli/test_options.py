"""The command line turned into ``Settings``: built once, frozen, every default and alias resolved."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from engine.checkpoint_policy import FIXED_ON_RESUME
from option import OptionError, RunKind, Settings, parse_options


def test_settings_are_frozen():
    s = parse_options(["--pre_path", "x.pth"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.run = s.run  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.pipeline.size_p = 64  # type: ignore[misc]


def test_parsing_twice_gives_equal_settings():
    argv = ["--pre_path", "x.pth", "--dataset", "inria", "--evaluate", "--size_p", "64", "--amp"]
    assert parse_options(argv) == parse_options(argv)
    assert parse_options(argv) != parse_options([*argv, "--size_g", "64"])


def test_val_alone_is_an_evaluation_of_crossvali():
    s = parse_options(["--pre_path", "x.pth", "--val"])
    assert (s.run.kind, s.run.split, s.run.tta, s.training.validate) == (RunKind.EVALUATE, "crossvali", False, False)
    assert s.paths.metrics_path == os.path.join("runs", "fctl", "metrics_crossvali.json")
    assert s == parse_options(["--pre_path", "x.pth", "--evaluate", "--split", "crossvali"])
    assert parse_options(["--pre_path", "x.pth", "--val", "--split", "train"]).run.split == "train"
    trained = parse_options(["--train", "--val"])
    assert (trained.run.kind, trained.training.validate, trained.run.split) == (RunKind.TRAIN, True, None)


def test_inria_defaults():
    s = parse_options(["--pre_path", "x.pth", "--dataset", "inria"])
    assert (s.dataset.correlation, s.pipeline.context, s.paths.data_path, s.training.save_each_epoch_from) == \
        ("plain", 2, "data_inria", 0)
    assert s.dataset.classes.names == ("background", "building")


def test_run_kinds_and_their_tta_default():
    base = ["--pre_path", "x.pth"]
    predict = parse_options(base)
    assert (predict.run.kind, predict.run.split, predict.run.tta, predict.scenes) == \
        (RunKind.PREDICT_SPLIT, "test", True, None)
    assert parse_options([*base, "--no_tta"]).run.tta is False
    assert parse_options([*base, "--evaluate", "--tta"]).run.tta is True
    scenes = parse_options([*base, "--input", "a.tif", "b.tif", "--bands", "4,3,2", "--input_range", "p2,p98"])
    assert (scenes.run.kind, scenes.run.split, scenes.run.tta) == (RunKind.PREDICT_SCENES, None, True)
    assert (scenes.scenes.inputs, scenes.scenes.bands) == (("a.tif", "b.tif"), (4, 3, 2))
    assert scenes.scenes.input_range.percentiles == (2.0, 98.0)
    assert parse_options(["--train", "--tta"]).run.tta is False


@pytest.mark.parametrize(("original", "plain"), [
    (["--context10", "2"], ["--context", "2"]),
    (["--context15", "4"], ["--context2", "4"]),
    (["--glo_path_10", "a.pth"], ["--c_path", "a.pth"]),
    (["--glo_path_15", "b.pth"], ["--c2_path", "b.pth"]),
    (["--dataset", "1"], ["--dataset", "deepglobe"]),
    (["--dataset", "2"], ["--dataset", "inria"]),
])
def test_an_alias_gives_the_settings_of_its_plain_flag(original, plain):
    base = ["--pre_path", "x.pth", "--mode", "5", "--c_path", "c.pth", "--c2_path", "c2.pth"]
    assert parse_options([*base, *original]) == parse_options([*base, *plain])


def test_derived_values():
    s = parse_options(["--pre_path", "x.pth", "--model_path", "m", "--glo_path", "/abs/g.pth", "--mode", "3",
                       "--amp", "--amp_dtype", "fp16", "--no_pretrained", "--log_path", "l", "--task_name", "t"])
    assert (s.paths.pre_path, s.paths.glo_path, s.paths.c_path) == (os.path.join("m", "x.pth"), "/abs/g.pth", None)
    assert (s.pipeline.amp, s.pipeline.amp_dtype, s.training.pretrained) == (True, torch.float16, False)
    assert (s.paths.log_dir, s.paths.metrics_path) == (os.path.join("l", "t"), None)


def test_the_settings_a_resumed_run_compares_are_found_by_name():
    s = parse_options(["--train", "--batch_size", "2", "--max_images", "3"])
    assert {name: s.value(name) for name in FIXED_ON_RESUME}["batch_size"] == 2
    assert s.value("max_images") == 3
    with pytest.raises(KeyError):
        s.value("no_such_setting")


def test_setting_names_are_unique_across_groups():
    s = parse_options(["--pre_path", "x.pth", "--input", "a.tif"])
    groups = [getattr(s, f.name) for f in dataclasses.fields(Settings)]
    names = [f.name for group in groups for f in dataclasses.fields(group)]
    assert len(names) == len(set(names))


def test_mode_5_refuses_a_large_window_smaller_than_the_medium_one():
    five = ["--pre_path", "x.pth", "--mode", "5", "--c_path", "c.pth", "--c2_path", "c2.pth"]
    with pytest.raises(OptionError, match="--context2 2 x size_p: the large window must not be the smaller"):
        parse_options([*five, "--context", "3", "--context2", "2"])
    assert parse_options([*five, "--context", "2", "--context2", "3"]).pipeline.context2 == 3
    four = ["--pre_path", "x.pth", "--mode", "4", "--c_path", "c.pth", "--glo_path", "g.pth"]
    assert parse_options([*four, "--context", "3", "--context2", "2"]).pipeline.context == 3  # no large window there


def test_negative_values_of_input_range_are_values():
    base = ["--pre_path", "x.pth", "--mode", "1", "--input", "scene.tif"]
    assert parse_options([*base, "--input_range", "-1020,1020"]).scenes.input_range.pairs == ((-1020.0, 1020.0),)
    three = parse_options([*base, "--input_range", "-1,1", "-2.5,2", "-.5,0.5", "--no_tta"]).scenes.input_range
    assert three.pairs == ((-1.0, 1.0), (-2.5, 2.0), (-0.5, 0.5))
    with pytest.raises(OptionError, match="unrecognized arguments: --nope"):
        parse_options([*base, "--nope"])


def test_a_data_path_that_does_not_exist_is_refused_with_input(tmp_path):
    """With --input the data path only brings a prepared folder's classes and bands: a typo must not
    fall back to DeepGlobe's silently."""
    base = ["--pre_path", "x.pth", "--mode", "1", "--input", "scene.tif"]
    with pytest.raises(OptionError, match="--data_path .*nope does not exist; with --input it names a folder prepared"):
        parse_options([*base, "--data_path", str(tmp_path / "nope")])
    assert parse_options([*base, "--data_path", str(tmp_path)]).dataset.name == "deepglobe"


def test_max_images_does_not_apply_to_input_scenes():
    with pytest.raises(OptionError, match="--max_images applies to the images of a split"):
        parse_options(["--pre_path", "x.pth", "--mode", "1", "--input", "scene.tif", "--max_images", "1"])
