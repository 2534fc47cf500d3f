from pathlib import Path

import pytest

from ref_assets.config import ConfigError, default_configuration_dir, load_settings


def test_defaults_without_a_ref_toml(tmp_path):
    settings = load_settings({"REF_CONFIGURATION": str(tmp_path)})
    assert settings.storage_root == str(tmp_path / "stores")
    assert settings.user_spec_dir == tmp_path / "datasets"
    assert not (tmp_path / "ref.toml").exists()  # nothing written
    assert load_settings({}).configuration_dir == default_configuration_dir()


def test_ref_toml_root_is_relative_to_the_configuration_dir_and_env_overrides_it(tmp_path):
    (tmp_path / "ref.toml").write_text('# mine\n[storage]\nroot = "data/stores"\n')
    assert load_settings({"REF_CONFIGURATION": str(tmp_path)}).storage_root == str(
        tmp_path / "data" / "stores"
    )
    override = {"REF_CONFIGURATION": str(tmp_path), "REF_STORAGE_ROOT": "/srv/stores"}
    assert load_settings(override).storage_root == "/srv/stores"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage\nroot = 1", "not valid TOML"),
        ("[storage]\nroot = 5", "[storage.root] Input should be a valid string"),
        ("[storage]\nrooot = 'x'", "[storage.rooot] Extra inputs are not permitted"),
    ],
)
def test_bad_ref_toml_names_file_and_key(tmp_path: Path, text, message):
    (tmp_path / "ref.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"ref\.toml") as raised:
        load_settings({"REF_CONFIGURATION": str(tmp_path)})
    assert message in str(raised.value)
