import subprocess
import sys
from pathlib import Path

import pytest

from lmforge.config import Config, field_docs, iter_fields, load_config
from lmforge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def test_defaults_validate():
    cfg = Config().validate()
    assert cfg.optim.lr > 0


def test_every_field_has_a_docstring():
    missing = [name for name, _, _, doc in iter_fields(Config) if not doc]
    assert not missing, f"fields without a docstring: {missing}"


def test_yaml_and_dotted_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.01\ntrain:\n  max_steps: 7\nmodel:\n  d_model: 32\n  n_head: 2\n")
    cfg = load_config(p, {"optim.lr": "3e-4", "model.tied_embeddings": "false", "data.path": "x.txt"})
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 7
    assert cfg.model.d_model == 32
    assert cfg.model.tied_embeddings is False
    assert cfg.data.path == "x.txt"


def test_unknown_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match="optim.lrr.*Did you mean 'optim.lr'"):
        load_config(None, {"optim.lrr": "1"})
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match=r"model.n_layers.*c.yaml.*Did you mean 'model.n_layer'"):
        load_config(p)


def test_bad_values_name_the_field():
    with pytest.raises(ConfigError, match="train.max_steps.*integer"):
        load_config(None, {"train.max_steps": "ten"})
    with pytest.raises(ConfigError, match="model.d_model.*divisible"):
        load_config(None, {"model.d_model": "130", "model.n_head": "4"})
    with pytest.raises(ConfigError, match="schedule.kind.*cosine"):
        load_config(None, {"schedule.kind": "cosin"})
    with pytest.raises(ConfigError, match="schedule.min_lr"):
        load_config(None, {"optim.lr": "1e-4", "schedule.min_lr": "1e-3"})


def test_cli_help_shows_docstrings():
    out = subprocess.run([sys.executable, "-m", "lmforge.cli", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--optim.lr" in out
    assert field_docs(type(Config().optim))["lr"].split()[0] in out


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_presets_validate_and_start_with_their_command(preset):
    load_config(preset)
    first = preset.read_text().splitlines()[0]
    assert first.startswith("# lmforge "), f"{preset.name} must start with the command that runs it"


def test_tiny_preset_exists():
    assert (ROOT / "configs" / "tiny.yaml").is_file()
