import os
import shutil
from pathlib import Path

import pytest
import yaml

from ref_assets import config as config_module
from ref_assets.catalog import load_catalog
from ref_assets.cli import main
from ref_assets.config import (
    DEFAULT_VARIABLES_CV,
    ConfigError,
    default_configuration_dir,
    edit_ref_toml,
    load_settings,
)
from ref_assets.definitions import build_definitions
from ref_assets.packaged import PackagedFiles, PackagedRef
from ref_assets.vocabulary import load_vocabulary

PACKAGED_CV = PackagedRef.parse(DEFAULT_VARIABLES_CV)


def test_defaults_without_a_ref_toml(tmp_path):
    settings = load_settings({"REF_CONFIGURATION": str(tmp_path)})
    assert settings.storage_root == str(tmp_path / "stores")
    assert settings.user_spec_dir == tmp_path / "datasets"
    assert settings.variables_cv == DEFAULT_VARIABLES_CV
    assert settings.warnings == ()
    assert not (tmp_path / "ref.toml").exists()  # nothing written
    assert load_settings({}).configuration_dir == default_configuration_dir()


def test_ref_toml_root_is_relative_to_the_configuration_dir_and_env_overrides_it(tmp_path):
    (tmp_path / "ref.toml").write_text('# mine\n[storage]\nroot = "data/stores"\n')
    assert load_settings({"REF_CONFIGURATION": str(tmp_path)}).storage_root == str(
        tmp_path / "data" / "stores"
    )
    override = {"REF_CONFIGURATION": str(tmp_path), "REF_STORAGE_ROOT": "/srv/stores"}
    settings = load_settings(override)
    assert settings.storage_root == "/srv/stores"
    assert {s.key: s.origin for s in settings.values}["storage.root"] == "REF_STORAGE_ROOT"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[storage\nroot = 1", "not valid TOML"),
        ("[storage]\nroot = 5", "storage.root = 5: Input should be a valid string"),
        ("[paths]\nvariables_cv = ['a']", "paths.variables_cv = ['a']: Input should be a valid"),
        ("storage = 'flat'", "storage = 'flat'"),
    ],
)
def test_bad_ref_toml_names_file_key_and_expected_type(tmp_path: Path, text, message):
    (tmp_path / "ref.toml").write_text(text)
    with pytest.raises(ConfigError, match=r"ref\.toml") as raised:
        load_settings({"REF_CONFIGURATION": str(tmp_path)})
    assert message in str(raised.value)


def test_unknown_keys_are_warned_about_not_fatal(tmp_path, caplog):
    (tmp_path / "ref.toml").write_text(
        '[storage]\nrooot = "x"\n[strage]\nroot = "y"\n[[providers]]\n'
        'provider = "ref_assets.providers.synthetic:SyntheticProvider"\nlabel = "z"\n'
    )
    settings = load_settings({"REF_CONFIGURATION": str(tmp_path)})
    assert settings.storage_root == str(tmp_path / "stores")
    warnings = "\n".join(settings.warnings)
    assert "unknown key 'storage.rooot' ignored (did you mean 'root'?)" in warnings
    assert "unknown key 'strage' ignored (did you mean 'storage'?)" in warnings
    assert "[[providers]] #1: unknown key 'label' ignored" in warnings
    assert "unknown key 'storage.rooot'" in caplog.text


def _venv_path(prefix: Path, ref: PackagedRef) -> Path:
    return prefix / "lib" / "python3.11" / "site-packages" / ref.package / ref.file


@pytest.mark.parametrize("old_venv_still_exists", [False, True])
def test_ref_toml_written_under_another_venv_loads_and_is_healed(
    settings, write_spec, caplog, old_venv_still_exists
):
    """Round trip across an upgrade: the file names the vocabulary by a path into another
    interpreter's site-packages; it loads, resolves, and is rewritten durably, comments kept."""
    old_path = _venv_path(settings.configuration_dir.parent / "old-image" / "venv", PACKAGED_CV)
    if old_venv_still_exists:  # inside a venv is fragile even while it exists
        old_path.parent.mkdir(parents=True)
        old_path.write_bytes(b"# an older vocabulary\n")
    text = (
        "# written by the 2025 image\n[paths]\n# what specs are checked against\n"
        f'variables_cv = "{old_path}"  # set by the installer\n'
    )
    settings.config_file.write_text(text)
    write_spec("healed_t2m")

    healed = load_settings()
    assert healed.variables_cv == DEFAULT_VARIABLES_CV
    assert "names the packaged file packaged:ref_assets/data/variables_cv.toml" in caplog.text
    assert settings.config_file.read_text() == text.replace(str(old_path), DEFAULT_VARIABLES_CV)
    cached = healed.resolve_path(healed.variables_cv)
    assert cached == settings.cache_dir / "ref_assets" / "data" / "variables_cv.toml"
    assert cached.read_bytes() == PackagedFiles(settings.cache_dir).packaged_bytes(PACKAGED_CV)
    assert load_settings().warnings == ()  # the next process loads cleanly
    catalog = load_catalog(healed)
    assert catalog.errors == []
    assert {"healed_t2m", "demo_air_temperature"} <= set(catalog.specs)
    assert build_definitions(healed).resolve_assets_def("healed_t2m")


def test_environment_override_is_healed_in_memory_only(settings):
    old_path = _venv_path(Path("/nonexistent/venv"), PACKAGED_CV)
    healed = load_settings({**os.environ, "REF_PATHS_VARIABLES_CV": str(old_path)})
    assert healed.variables_cv == DEFAULT_VARIABLES_CV
    assert "REF_PATHS_VARIABLES_CV (paths.variables_cv)" in healed.warnings[0]
    assert not settings.config_file.exists()


def test_a_missing_explicit_vocabulary_is_an_error_that_says_what_to_do(settings):
    settings.config_file.write_text('[paths]\nvariables_cv = "/srv/ref/my_vocabulary.toml"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "ref.toml (paths.variables_cv): /srv/ref/my_vocabulary.toml does not exist" in message
    assert f"remove the key to use the packaged default ({DEFAULT_VARIABLES_CV})" in message


def test_specs_are_checked_against_the_configured_vocabulary(settings, write_spec):
    ndvi = {"name": "ndvi", "units": "1"}
    write_spec("vegetation", variables=[ndvi])
    write_spec("kelvin", variables=[{"name": "t2m", "units": "degF"}])
    mislabelled = {"name": "t2m", "units": "K", "attributes": {"standard_name": "pr"}}
    write_spec("mislabelled", variables=[mislabelled])
    catalog = load_catalog(settings)
    errors = {e.path.stem: (e.field, e.message) for e in catalog.errors}
    assert errors["vegetation"][0] == "variables.0.name"
    assert "'ndvi' is not in the variable vocabulary" in errors["vegetation"][1]
    assert errors["kelvin"] == (
        "variables.0.units",
        "t2m: units 'degF' are not allowed by the vocabulary (allowed: degC, K)",
    )
    assert errors["mislabelled"][0] == "variables.0.attributes.standard_name"

    # An operator's own vocabulary extends the packaged one (relative paths: config directory).
    (settings.configuration_dir / "vocabulary.toml").write_text(
        'format = "ref-assets/variables-cv-v1"\n'
        f'extends = "{DEFAULT_VARIABLES_CV}"\n'
        '[variables.ndvi]\nunits = ["1"]\n'
    )
    settings.config_file.write_text('[paths]\nvariables_cv = "vocabulary.toml"\n')
    catalog = load_catalog(load_settings())
    assert "vegetation" in catalog.specs and "demo_air_temperature" in catalog.specs
    assert {e.path.stem for e in catalog.errors} == {"kelvin", "mislabelled"}


def test_a_broken_vocabulary_names_its_file(settings):
    (settings.configuration_dir / "vocabulary.toml").write_text(
        'format = "ref-assets/variables-cv-v1"\n[variables.t2m]\nunits = "K"\n'
    )
    settings.config_file.write_text('[paths]\nvariables_cv = "vocabulary.toml"\n')
    with pytest.raises(ConfigError, match=r"vocabulary\.toml.*variables\.t2m\.units"):
        load_catalog(load_settings())


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("valid_range = { degF = [0, 1] }", r"valid_range is given for units \['degF'\]"),
        ("display_range = { K = [300, 200] }", r"display_range\.K.*low < high"),
    ],
)
def test_value_ranges_must_name_allowed_units_in_order(settings, entry, problem):
    (settings.configuration_dir / "vocabulary.toml").write_text(
        f'format = "ref-assets/variables-cv-v1"\n[variables.t2m]\nunits = ["K"]\n{entry}\n'
    )
    settings.config_file.write_text('[paths]\nvariables_cv = "vocabulary.toml"\n')
    with pytest.raises(ConfigError, match=problem):
        load_catalog(load_settings())


def test_packaged_vocabulary_has_valid_ranges_for_every_allowed_unit(settings):
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
    for name, entry in vocabulary.variables.items():
        assert set(entry.valid_range) == set(entry.units), name
        assert entry.colormap, name


def test_edits_are_atomic_and_keep_comments(settings, monkeypatch):
    original = '# operator notes\n[storage]\nroot = "a"  # the big disk\n'
    settings.config_file.write_text(original)

    def set_root(value):
        return lambda document: document["storage"].__setitem__("root", value)

    edit_ref_toml(settings.configuration_dir, set_root("b"))
    assert settings.config_file.read_text() == original.replace('"a"', '"b"')

    with pytest.raises(ConfigError, match=r"storage\.root = 3"):  # would not load: refused
        edit_ref_toml(settings.configuration_dir, set_root(3))

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        edit_ref_toml(settings.configuration_dir, set_root("c"))
    assert settings.config_file.read_text() == original.replace('"a"', '"b"')
    leftovers = [p.name for p in settings.configuration_dir.iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_config_show_masks_secrets_and_names_origins(settings, capsys, monkeypatch):
    settings.config_file.write_text('[storage]\nroot = "https://reader:hunter2@data.example/x"\n')
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr().out
    assert "hunter2" not in shown
    assert 'root = "https://***@data.example/x" # from ref.toml' in shown
    assert f'variables_cv = "{DEFAULT_VARIABLES_CV}" # from default' in shown
    monkeypatch.setenv("REF_STORAGE_ROOT", "/srv/stores")
    assert main(["config", "show", "--json"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)  # JSON is YAML
    assert shown["settings"]["storage.root"] == {"value": "/srv/stores", "from": "REF_STORAGE_ROOT"}


def test_config_validate_reports_every_problem_and_exits_nonzero(settings, write_spec, capsys):
    assert main(["config", "validate"]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    write_spec("orphan", provider="retired_provider")
    write_spec("fahrenheit", variables=[{"name": "t2m", "units": "degF"}])
    settings.config_file.write_text('[[providers]]\nprovider = "gone_company.providers:Gone"\n')
    assert main(["config", "validate"]) == 1
    out = capsys.readouterr().out
    assert "error: provider gone_company.providers:Gone (ref.toml [[providers]] #1): module" in out
    assert (
        "error: dataset orphan (" in out and "): provider 'retired_provider' is unavailable" in out
    )
    assert "fahrenheit.yaml: variables.0.units" in out
    assert "3 error(s)" in out


def test_config_set_stores_a_durable_reference_for_a_packaged_path(settings, capsys):
    settings.config_file.write_text("# keep me\n")
    venv_path = _venv_path(Path("/usr/local"), PACKAGED_CV)
    assert main(["config", "set", "paths.variables_cv", str(venv_path)]) == 0
    text = settings.config_file.read_text()
    assert text.startswith("# keep me\n")
    assert f'variables_cv = "{DEFAULT_VARIABLES_CV}"' in text
    assert main(["config", "set", "paths.variables_cv", "/missing/file.toml"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert DEFAULT_VARIABLES_CV in settings.config_file.read_text()


def test_healing_survives_a_configuration_dir_that_cannot_be_written(settings, monkeypatch):
    old_path = _venv_path(Path("/gone/venv"), PACKAGED_CV)
    text = f'[paths]\nvariables_cv = "{old_path}"\n'
    settings.config_file.write_text(text)

    def read_only(path, data):
        raise PermissionError(13, "Read-only file system", str(path))

    monkeypatch.setattr(config_module, "atomic_write_bytes", read_only)
    healed = load_settings()
    assert healed.variables_cv == DEFAULT_VARIABLES_CV
    assert settings.config_file.read_text() == text


def test_cache_path_in_ref_toml_is_repaired_when_the_cache_is_deleted(settings, write_spec):
    cached = PackagedFiles(settings.cache_dir).path(PACKAGED_CV)
    settings.config_file.write_text(f'[paths]\nvariables_cv = "{cached}"\n')
    write_spec("after_wipe")
    shutil.rmtree(settings.cache_dir)
    reloaded = load_settings()
    assert reloaded.warnings == ()
    assert "after_wipe" in load_catalog(reloaded).specs
    assert cached.is_file()
    assert str(cached) in settings.config_file.read_text()  # the operator's value is left alone


def test_only_paths_into_a_python_environment_are_healed(tmp_path):
    # A configuration directory that happens to be called ref_assets (the platform default is
    # ~/.config/ref_assets): a missing file of the operator's own is an error, never swapped.
    configuration = tmp_path / "ref_assets"
    configuration.mkdir()
    (configuration / "ref.toml").write_text('[paths]\nvariables_cv = "data/variables_cv.toml"\n')
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"REF_CONFIGURATION": str(configuration)})
    assert "data/variables_cv.toml" in (configuration / "ref.toml").read_text()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cache/../my_vocabulary.toml", "my_vocabulary.toml does not exist"),
        ("cache/not_installed_package_xyz/cv.toml", "'not_installed_package_xyz' is not installed"),
        ("packaged:ref_assets//data/variables_cv.toml", "empty parts"),
        ("packaged:this/data.toml", "'this' is a module, not a package"),
    ],
)
def test_path_tricks_are_errors_naming_the_key(settings, value, message):
    settings.config_file.write_text(f'[paths]\nvariables_cv = "{value}"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"{settings.config_file} (paths.variables_cv)" in str(raised.value)
    assert message in str(raised.value)


def test_config_set_repairs_a_file_that_does_not_load(settings, capsys):
    settings.config_file.write_text('# mine\n[paths]\nvariables_cv = "/srv/gone.toml"\n')
    with pytest.raises(ConfigError):
        load_settings()
    assert main(["config", "set", "paths.variables_cv", DEFAULT_VARIABLES_CV]) == 0
    assert load_settings().variables_cv == DEFAULT_VARIABLES_CV
    assert settings.config_file.read_text().startswith("# mine\n")


def test_writes_keep_permissions_and_follow_symlinks(settings, tmp_path):
    shared = tmp_path / "shared" / "ref.toml"
    shared.parent.mkdir()
    shared.write_text('[storage]\nroot = "a"\n')
    shared.chmod(0o644)
    settings.config_file.symlink_to(shared)
    assert main(["config", "set", "storage.root", "b"]) == 0
    assert settings.config_file.is_symlink()
    assert shared.read_text() == '[storage]\nroot = "b"\n'
    assert shared.stat().st_mode & 0o777 == 0o644


def test_secrets_do_not_leak_through_type_errors(settings):
    settings.config_file.write_text('[storage]\nroot = ["https://reader:hunter2@host/x"]\n')
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value)
    assert "https://***@host/x" in str(raised.value)


def test_a_stale_venv_path_in_extends_is_read_through_the_cache(settings, write_spec, caplog):
    stale = _venv_path(Path("/gone/venv"), PACKAGED_CV)
    (settings.configuration_dir / "vocabulary.toml").write_text(
        f'format = "ref-assets/variables-cv-v1"\nextends = "{stale}"\n'
        '[variables.ndvi]\nunits = ["1"]\n'
    )
    settings.config_file.write_text('[paths]\nvariables_cv = "vocabulary.toml"\n')
    write_spec("vegetation", variables=[{"name": "ndvi", "units": "1"}])
    catalog = load_catalog(load_settings())
    assert {"vegetation", "demo_air_temperature"} <= set(catalog.specs)
    assert f"names the packaged file {DEFAULT_VARIABLES_CV}" in caplog.text

    (settings.configuration_dir / "vocabulary.toml").write_text(
        'format = "ref-assets/variables-cv-v1"\nextends = "base.toml"\n'
    )
    with pytest.raises(ConfigError, match=r"named by `extends` in .*vocabulary\.toml"):
        load_catalog(load_settings())
