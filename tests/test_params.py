import pytest

from mousefacelift.params import ParamsError, notebook_parameters, resolve
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
