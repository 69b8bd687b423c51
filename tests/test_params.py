import json
import re
from pathlib import Path

import pytest
import yaml

from mousefacelift.params import (INPUT_PATHS, NOTEBOOK_CONFIGS, RENAMED, RUN_PATHS, RUNNER_KEYS, ParamsError,
                                  check_parameter_ranges, load_yaml, notebook_parameters, parameter_ranges, resolve,
                                  resolve_paths)
from mousefacelift.runner import find_notebooks
from nbtools import make_notebook


@pytest.fixture
def notebooks(tmp_path):
    a = make_notebook(tmp_path / "nb" / "01_extract.ipynb",
                      "seed = 0  # random seed\nn_frames = 40  # frames to extract\nscale = 1.0\n"
                      "device = 'cpu'  # torch device\nviews = [0, 1]\nckpt = None\nfrom_run = ''")
    b = make_notebook(tmp_path / "nb" / "02_train.ipynb", "seed = 0\nlr: float = 1e-4  # learning rate\nuse_ema = True")
    return {"01_extract": a, "02_train": b}


def write(tmp_path, text):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_parameters_cell_parsed_with_comments(notebooks):
    params = notebook_parameters(notebooks["01_extract"])
    assert list(params) == ["seed", "n_frames", "scale", "device", "views", "ckpt", "from_run"]
    assert params["n_frames"].default == 40 and params["n_frames"].comment == "frames to extract"
    assert notebook_parameters(notebooks["02_train"])["lr"].default == 1e-4


def test_shared_and_section_keys_merge(tmp_path, notebooks):
    p = write(tmp_path, "seed: 3\ndevice: cuda\n01_extract:\n  n_frames: 8\n  scale: 2\n02_train:\n  lr: 0.001\n")
    r = resolve(p, notebooks)
    assert r["01_extract"] == {"seed": 3, "device": "cuda", "n_frames": 8, "scale": 2}
    assert r["02_train"] == {"seed": 3, "lr": 0.001}


def test_misspelled_section_key_names_closest(tmp_path, notebooks):
    p = write(tmp_path, "01_extract:\n  n_frame: 8\n")
    with pytest.raises(ParamsError) as e:
        resolve(p, notebooks)
    msg = str(e.value)
    assert "p.yaml" in msg and "'n_frame'" in msg and "Did you mean 'n_frames'" in msg and "Valid keys" in msg


def test_misspelled_shared_key_and_section(tmp_path, notebooks):
    with pytest.raises(ParamsError, match="Did you mean 'seed'"):
        resolve(write(tmp_path, "sed: 1\n"), notebooks)
    with pytest.raises(ParamsError, match="Did you mean '01_extract'"):
        resolve(write(tmp_path, "01_extrat:\n  seed: 1\n"), notebooks)


@pytest.mark.parametrize("text", ["01_extract:\n  n_frames: 4.5\n", "02_train:\n  use_ema: 1\n",
                                  "01_extract:\n  device: 3\n", "01_extract:\n  views: 2\n",
                                  "02_train:\n  lr: yes\n"])
def test_wrong_type_is_an_error(tmp_path, notebooks, text):
    with pytest.raises(ParamsError, match="wrong type"):
        resolve(write(tmp_path, text), notebooks)


def test_int_for_float_and_anything_for_none(tmp_path, notebooks):
    r = resolve(write(tmp_path, "02_train:\n  lr: 1\n01_extract:\n  ckpt: some/path.pt\n"), notebooks)
    assert r["02_train"]["lr"] == 1 and r["01_extract"]["ckpt"] == "some/path.pt"


def test_runner_keys_rejected(tmp_path, notebooks):
    with pytest.raises(ParamsError, match="--from-run"):
        resolve(write(tmp_path, "from_run: x\n"), notebooks)


def test_non_literal_default_rejected(tmp_path):
    nb = make_notebook(tmp_path / "01_x.ipynb", "import os\nx = 1")
    with pytest.raises(ParamsError, match="only hold"):
        notebook_parameters(nb)


def test_base_file_is_read_first_and_overridden(tmp_path, notebooks):
    (tmp_path / "gpu.yaml").write_text("seed: 3\ndevice: cuda\n01_extract:\n  n_frames: 8\n  scale: 2\n")
    variant = tmp_path / "sub" / "variant.yaml"
    variant.parent.mkdir()
    variant.write_text("base: ../gpu.yaml\nseed: 5\n01_extract:\n  scale: 0.5\n")
    resolved = resolve(variant, notebooks)
    assert resolved["01_extract"] == {"seed": 5, "device": "cuda", "n_frames": 8, "scale": 0.5}
    assert resolved["02_train"] == {"seed": 5}


def test_base_errors_name_the_file(tmp_path, notebooks):
    p = write(tmp_path, "base: missing.yaml\n")
    with pytest.raises(ParamsError, match=r"missing.yaml \(base of .*p.yaml\) not found"):
        resolve(p, notebooks)
    (tmp_path / "a.yaml").write_text("base: p.yaml\n")
    write(tmp_path, "base: a.yaml\n")
    with pytest.raises(ParamsError, match="cycle"):
        resolve(p, notebooks)
    (tmp_path / "b.yaml").write_text("base: b.yaml\n01_extract:\n  n_frame: 3\n")
    with pytest.raises(ParamsError, match="cycle"):
        resolve(tmp_path / "b.yaml", notebooks)


# ----------------------------------------------------------------------------------------------
# The YAML loader: exponent floats, duplicate keys
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("1e-4", 1e-4), ("1E+5", 1e5), ("1e5", 1e5), ("-2.5e3", -2500.0),
                                         ("2.5E-3", 0.0025), (".5e1", 5.0), ("1_000e-3", 1.0), ("0.001", 0.001)])
def test_exponent_numbers_are_floats(tmp_path, notebooks, text, value):
    assert load_yaml(write(tmp_path, f"lr: {text}\n"))["lr"] == value
    assert isinstance(load_yaml(write(tmp_path, f"lr: {text}\n"))["lr"], float)
    assert resolve(write(tmp_path, f"02_train:\n  lr: {text}\n"), notebooks)["02_train"]["lr"] == value


def test_plain_yaml_reads_1e_minus_4_as_a_string_and_quoted_stays_a_string(tmp_path, notebooks):
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"  # the problem the loader fixes
    assert load_yaml(write(tmp_path, "a: '1e-4'\nb: 10\nc: e5\nd: 1e\n")) == {"a": "1e-4", "b": 10, "c": "e5", "d": "1e"}
    with pytest.raises(ParamsError, match="wrong type"):
        resolve(write(tmp_path, "02_train:\n  lr: '1e-4'\n"), notebooks)


def test_a_key_written_twice_names_the_file_the_line_and_the_key(tmp_path, notebooks):
    p = write(tmp_path, "seed: 1\n01_extract:\n  n_frames: 8\n  seed: 2\n  n_frames: 9\n")
    with pytest.raises(ParamsError, match=r"p.yaml, line 5: key 'n_frames' is written twice in one mapping "
                                          r"\(first on line 3\)"):
        resolve(p, notebooks)
    p = write(tmp_path, "01_extract:\n  n_frames: 8\n02_train:\n  lr: 0.1\n01_extract:\n  seed: 2\n")
    with pytest.raises(ParamsError, match=r"line 5: key '01_extract' is written twice.*first on line 1"):
        resolve(p, notebooks)
    p = write(tmp_path, "01_extract:\n  views: [1, 2]\n  ckpt: {a: 1, a: 2}\n")
    with pytest.raises(ParamsError, match=r"line 3: key 'a'"):
        load_yaml(p)
    # the same key in different mappings, or overriding a base file, is fine
    assert load_yaml(write(tmp_path, "a: {x: 1}\nb: {x: 2}\n")) == {"a": {"x": 1}, "b": {"x": 2}}


# ----------------------------------------------------------------------------------------------
# Ranges: notebook parameters checked against the library config fields they set
# ----------------------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def real_notebooks():
    return find_notebooks(ROOT / "notebooks")


@pytest.mark.parametrize("stem, key, value, match", [
    ("06_gslrm_finetune", "lr", 0, r"06_gslrm_finetune.lr = 0 is out of range: must be > 0 \(it sets TrainConfig.lr\)"),
    ("06_gslrm_finetune", "steps", 0, r"steps = 0 is out of range: must be >= 1"),
    ("06_gslrm_finetune", "batch_size", 0, r"batch_size = 0 .* >= 1"),
    ("06_gslrm_finetune", "image_size", 4, r"image_size = 4 .* >= 8 \(it sets TrainConfig.model.image_size\)"),
    ("06_gslrm_finetune", "loss_l2", -1.0, r"loss_l2 = -1.0 .* >= 0 \(it sets TrainConfig.loss.l2\)"),
    ("06_gslrm_finetune", "min_lr_ratio", 1.5, r"min_lr_ratio = 1.5 .* in \[0, 1\]"),
    ("06_gslrm_finetune", "input_views", 0, r"TrainConfig.data.input_views"),
    ("04_mvdiffusion_finetune", "finetune_lr", -1e-5, r"finetune_lr = -1e-05 .* > 0 \(it sets TrainConfig.lr\)"),
    ("04_mvdiffusion_finetune", "cond_dropout", 1.2, r"cond_dropout = 1.2 .* in \[0, 1\]"),
    ("04_mvdiffusion_finetune", "val_every", 0, r"val_every = 0 .* >= 1"),
    ("04_mvdiffusion_finetune", "sampler_steps", 0, r"TrainConfig.val_sampler.steps"),
    ("05_synthetic_generation", "batch_size", 0, r"batch_size = 0 .* >= 1 \(it sets SyntheticConfig.batch_size\)"),
    ("01_data_extraction", "split_fractions", [0.9, 0.2, -0.1], r"split_fractions\[2\] = -0.1 .* in \[0, 1\]"),
    ("01_data_extraction", "skip_edges", 0.5, r"skip_edges = 0.5 .* in \[0, 0.5\) "
                                              r"\(it sets ExtractConfig.selection.skip_edges\)"),
    ("01_data_extraction", "synthetic_frames", 0, r"\(it sets ProceduralConfig.n_frames\)"),
    ("01_data_extraction", "image_size", 7, r"image_size = 7 .* >= 8 \(it sets ExtractConfig.image_size\)"),
])
def test_out_of_range_parameter_fails_before_anything_runs(tmp_path, real_notebooks, stem, key, value, match):
    p = write(tmp_path, yaml.safe_dump({stem: {key: value}}))
    with pytest.raises(ParamsError, match=match):
        check_parameter_ranges(p, {stem: resolve(p, real_notebooks)[stem]})
    # through `mfl run`: nothing executed, no run folder
    from mousefacelift import cli
    assert cli.main(["run", str(p), "--runs", str(tmp_path / "runs"), "--notebooks", str(ROOT / "notebooks"),
                     "--only", stem[:2]]) == 2
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("stem, key, value, new", [("04_mvdiffusion_finetune", "mixed_precision", "bf16", "precision"),
                                                   ("06_gslrm_finetune", "bf16", False, "precision")])
def test_a_renamed_parameter_names_its_new_name(tmp_path, real_notebooks, stem, key, value, new):
    """An old params YAML that sets a renamed parameter is refused with the new name, before anything runs."""
    p = write(tmp_path, yaml.safe_dump({stem: {key: value}}))
    with pytest.raises(ParamsError, match=rf"p.yaml: {stem}.{key} was renamed: write {new} "):
        resolve(p, real_notebooks)
    assert new in notebook_parameters(real_notebooks[stem]) and key not in notebook_parameters(real_notebooks[stem])
    assert resolve(write(tmp_path, yaml.safe_dump({stem: {new: "bf16"}})), real_notebooks)[stem] == {new: "bf16"}


def test_zero_meaning_unset_is_not_range_checked_by_name(real_notebooks):
    """01's n_samples / stride / workers: 0 means 'unset' there (the notebook passes None), so
    their config fields (>= 1) do not apply; the config checks what the notebook builds."""
    check_parameter_ranges("p.yaml", {"01_data_extraction": {"n_samples": 0, "stride": 0, "workers": 0}})


def test_every_notebook_default_and_every_committed_params_file_is_in_range(real_notebooks):
    for stem, path in real_notebooks.items():
        declared = notebook_parameters(path)
        ranges = parameter_ranges(stem, list(declared))
        check_parameter_ranges(path, {stem: {k: p.default for k, p in declared.items()}})
        for name in RENAMED.get(stem, {}):  # no stale renames
            assert name in declared, f"RENAMED[{stem!r}] names {name!r}, not a parameter of {path.name}"
        if stem in NOTEBOOK_CONFIGS:
            assert len(ranges) >= 5, (stem, ranges)
    assert {"lr", "steps", "batch_size", "image_size", "loss_l2", "overfit"} <= \
        set(parameter_ranges("06_gslrm_finetune", list(notebook_parameters(real_notebooks["06_gslrm_finetune"]))))
    for p in [*sorted((ROOT / "params").glob("*.yaml")), ROOT / "tests" / "tiny.yaml"]:
        check_parameter_ranges(p, resolve(p, real_notebooks))


# ----------------------------------------------------------------------------------------------
# Paths: relative input paths are relative to where `mfl run` starts, never to the run folder
# ----------------------------------------------------------------------------------------------
def test_every_path_parameter_is_classified(real_notebooks):
    """A new path-like parameter must be put in INPUT_PATHS (resolved against the directory mfl
    runs in) or RUN_PATHS (an artifact of a run, relative to the run folder)."""
    pattern = re.compile(r"path|dir|checkpoint|ckpt|weights|init_from")
    for stem, path in real_notebooks.items():
        for name, param in notebook_parameters(path).items():
            if isinstance(param.default, str) and pattern.search(name) and name not in RUNNER_KEYS:
                assert name in INPUT_PATHS or name in RUN_PATHS, f"{stem}.{name}: classify it in mousefacelift.params"


def test_resolve_paths(tmp_path):
    (tmp_path / "data" / "rec").mkdir(parents=True)
    (tmp_path / "w.pt").write_text("x")
    params = {"01_data_extraction": {"recording_path": "data/rec", "n_samples": 3},
              "06_gslrm_finetune": {"init_checkpoint": str(tmp_path / "w.pt"), "lpips_vgg_path": "missing/vgg.pth"},
              "07_evaluation": {"gslrm_dir": "gslrm", "lpips_vgg_path": ""}}
    resolved, given = resolve_paths(params, tmp_path / "data" / "..")
    assert resolved["01_data_extraction"] == {"recording_path": str(tmp_path / "data" / "rec"), "n_samples": 3}
    assert resolved["06_gslrm_finetune"] == {"init_checkpoint": str(tmp_path / "w.pt"),  # absolute: kept
                                             "lpips_vgg_path": str(tmp_path / "missing" / "vgg.pth")}  # optional
    assert resolved["07_evaluation"] == params["07_evaluation"]  # run-folder paths and "" as given
    assert given == {"01_data_extraction": {"recording_path": "data/rec"},
                     "06_gslrm_finetune": {"lpips_vgg_path": "missing/vgg.pth"}}
    with pytest.raises(ParamsError, match=r"p.yaml: 04_mvdiffusion_finetune.init_from = 'pipe': .*pipe does not "
                                          r"exist \(relative paths are relative to the directory mfl runs in"):
        resolve_paths({"04_mvdiffusion_finetune": {"init_from": "pipe"}}, tmp_path, "p.yaml")


def test_mfl_run_passes_absolute_input_paths_to_notebooks(tmp_path, monkeypatch):
    """The notebook runs with the run folder as cwd; a recording path written relative to the
    directory mfl was started in still reaches its file."""
    from mousefacelift import cli

    nbdir = tmp_path / "nbs"
    make_notebook(nbdir / "01_data_extraction.ipynb", "recording_path = ''  # input\nfrom_run = ''",
                  "from pathlib import Path\nfrom mousefacelift.stage import record_results\n"
                  "record_results('01_data_extraction', {'text': Path(recording_path).read_text()})")
    work = tmp_path / "work"
    (work / "inputs").mkdir(parents=True)
    (work / "inputs" / "rec.txt").write_text("found it")
    (work / "p.yaml").write_text("01_data_extraction:\n  recording_path: inputs/rec.txt\n")
    monkeypatch.chdir(work)
    assert cli.main(["run", "p.yaml", "--notebooks", str(nbdir), "--name", "r"]) == 0
    man = json.loads((work / "runs" / "r" / "manifest.json").read_text())
    assert man["notebooks"]["01_data_extraction"]["results"] == {"text": "found it"}
    assert man["params"]["01_data_extraction"]["recording_path"] == str(work / "inputs" / "rec.txt")
    assert man["params_paths_as_given"] == {"01_data_extraction": {"recording_path": "inputs/rec.txt"}}
