import os
import subprocess
import sys
from importlib.metadata import EntryPoint, entry_points

import pytest

from ref_assets.cli import main
from ref_assets.config import load_settings
from ref_assets.definitions import build_definitions
from ref_assets.providers import registry as registry_module
from ref_assets.providers.registry import (
    ProviderRegistry,
    ProviderUnavailableError,
    discover_providers,
    installed_providers,
)
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict, step_failure

GROUP = "ref_assets.providers"


def test_installed_entry_points_include_synthetic():
    assert "synthetic" in ProviderRegistry.discover().classes


def test_broken_providers_are_skipped_with_the_reason_and_others_register(caplog):
    registry = ProviderRegistry()
    entry_points = [
        EntryPoint("gone", "no_such_module.providers:Gone", GROUP),
        EntryPoint("not_a_provider", "ref_assets.periods:Period", GROUP),
        EntryPoint("synthetic", "ref_assets.providers.synthetic:SyntheticProvider", GROUP),
    ]
    for entry_point in entry_points:
        registry.register_entry_point(entry_point)
    assert list(registry.classes) == ["synthetic"]
    assert registry.skipped["gone"] == "module 'no_such_module' is not installed"
    assert "missing describe" in registry.skipped["not_a_provider"]
    assert "provider 'gone' (no_such_module.providers:Gone, entry point) skipped" in caplog.text
    with pytest.raises(ProviderUnavailableError, match="provider 'gone' is unavailable") as raised:
        registry.create(DatasetSpec.model_validate(spec_dict(provider="gone")))
    assert "module 'no_such_module' is not installed" in str(raised.value)
    assert "available: synthetic" in str(raised.value)


def test_dataset_with_a_missing_provider_is_an_asset_that_fails_clearly(
    settings, write_spec, materialize, monkeypatch, request
):
    write_spec("orphan", provider="retired_provider")
    write_spec("healthy")
    # Only the built-in provider is installed; the cache is per process, so start it afresh.
    synthetic = [e for e in entry_points(group=GROUP) if e.name == "synthetic"]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: synthetic)
    discover_providers.cache_clear()
    request.addfinalizer(discover_providers.cache_clear)
    keys = {k.to_user_string() for k in build_definitions(settings).resolve_all_asset_keys()}
    assert {"orphan", "healthy"} <= keys
    result = materialize("orphan", "2024-01-01", raise_on_error=False)
    assert not result.success
    failure = step_failure(result)
    assert "orphan: provider 'retired_provider' is unavailable" in (
        failure.step_failure_data.error.to_string()
    )
    assert materialize("healthy", "2024-01-01").success


# Comments belong to the entries they describe; the test checks each survives a prune.
REF_TOML = """\
# Providers for the climate service (edited by hand).
[storage]
root = "stores"  # next to this file

# The built-in generator under a second name, for a parallel test dataset.
[[providers]]
name = "synthetic_copy"
provider = "ref_assets.providers.synthetic:SyntheticProvider"

# Retired in 2024 with its company; nobody removed this entry.
[[providers]]
provider = "retired_company.providers:Gridded"

# Our own provider.
[[providers]]
provider = "ref_assets_tests.example_providers:InHouseProvider"  # version 2.1

# The end.
"""
UNKNOWN_ENTRY = """\
# Retired in 2024 with its company; nobody removed this entry.
[[providers]]
provider = "retired_company.providers:Gridded"

"""


@pytest.fixture
def fresh_registry(request):
    """The registry is cached per process; each test that changes ref.toml starts afresh."""
    discover_providers.cache_clear()
    request.addfinalizer(discover_providers.cache_clear)


def test_ref_toml_with_an_unknown_provider_loads_the_others(
    settings, write_spec, materialize, caplog, fresh_registry
):
    settings.config_file.write_text(REF_TOML)
    write_spec("copy_t2m", provider="synthetic_copy")
    write_spec("in_house_t2m", provider="in_house")
    write_spec("retired_t2m", provider="Gridded")
    for _ in range(3):  # the code location, the resources, ... all ask
        defs = build_definitions(load_settings())
    registry = installed_providers()
    assert {"synthetic", "synthetic_copy", "in_house"} <= set(registry.classes)
    assert registry.classes["in_house"].version == "2.1"
    [skipped] = [s for s in registry.sources if s.problem]
    assert skipped.origin == "ref.toml [[providers]] #2"
    assert skipped.problem == "module 'retired_company' is not installed"
    assert caplog.text.count("retired_company.providers:Gridded") == 1  # logged once
    keys = {k.to_user_string() for k in defs.resolve_all_asset_keys()}
    assert {"copy_t2m", "in_house_t2m", "retired_t2m", "demo_air_temperature"} <= keys

    assert materialize("copy_t2m", "2024-01-01").success
    assert materialize("in_house_t2m", "2024-01-01").success
    failed = materialize("retired_t2m", "2024-01-01", raise_on_error=False)
    failure = step_failure(failed)
    message = failure.step_failure_data.error.to_string()
    assert "retired_t2m: provider 'Gridded' is unavailable" in message
    assert "retired_company.providers:Gridded) did not load" in message
    assert "ref-assets providers prune" in message


def test_code_location_loads_in_a_fresh_process_with_an_unknown_provider(settings, write_spec):
    settings.config_file.write_text(REF_TOML)
    write_spec("in_house_t2m", provider="in_house")
    environment = {**os.environ, "DAGSTER_HOME": str(settings.configuration_dir)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "ref_assets.definitions",
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "retired_company" in result.stderr  # logged, then skipped


def test_providers_list_and_prune_remove_exactly_the_unknown_entry(
    settings, capsys, fresh_registry
):
    settings.config_file.write_text(REF_TOML)
    assert main(["providers", "list"]) == 0
    listing = capsys.readouterr().out
    assert "in_house\tok\t2.1\tref.toml [[providers]] #3" in listing
    assert "retired_company.providers:Gridded\tskipped" in listing

    assert main(["providers", "prune", "--dry-run"]) == 0
    assert "would remove ref.toml [[providers]] #2" in capsys.readouterr().out
    assert settings.config_file.read_text() == REF_TOML

    assert main(["providers", "prune"]) == 0
    assert "removed ref.toml [[providers]] #2: retired_company" in capsys.readouterr().out
    assert settings.config_file.read_text() == REF_TOML.replace(UNKNOWN_ENTRY, "")
    assert main(["providers", "prune"]) == 0
    assert "nothing to prune" in capsys.readouterr().out


def test_malformed_provider_entries_are_skipped_and_prunable(settings, capsys, fresh_registry):
    settings.config_file.write_text(
        '[[providers]]\nprovider = "not a reference"\n'
        '[[providers]]\nprovider = "ref_assets_tests.example_providers:NotAProvider"\n'
        '[[providers]]\nname = "in_house"\n'
        'provider = "ref_assets_tests.example_providers:InHouseProvider"\n'
    )
    registry = installed_providers()
    problems = {s.origin: s.problem for s in registry.sources if s.problem}
    assert "of the form 'package.module:attribute'" in problems["ref.toml [[providers]] #1"]
    assert "does not satisfy the provider protocol" in problems["ref.toml [[providers]] #2"]
    assert "in_house" in registry.classes
    assert main(["providers", "prune"]) == 0
    assert settings.config_file.read_text() == (
        '[[providers]]\nname = "in_house"\n'
        'provider = "ref_assets_tests.example_providers:InHouseProvider"\n'
    )


GONE = 'provider = "retired_company.providers:Gridded"\n'
KEPT = 'provider = "ref_assets.providers.synthetic:SyntheticProvider"\n'


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(
            f"# providers, by hand\n\n# the retired one\n[[providers]]\n{GONE}\n"
            f"# ours\n[[providers]]\n{KEPT}",
            f"# providers, by hand\n\n# ours\n[[providers]]\n{KEPT}",
            id="first-in-file",
        ),
        pytest.param(
            f'[[providers]]\n{KEPT}# name = "copy"   (commented out)\n\n# the retired one\n'
            f'[[providers]]\n{GONE}\n# storage: the big disk\n[storage]\nroot = "x"\n',
            f'[[providers]]\n{KEPT}# name = "copy"   (commented out)\n\n'
            '# storage: the big disk\n[storage]\nroot = "x"\n',
            id="last-before-a-section",
        ),
        pytest.param(
            f"[[other]]\na = 1\n\n# the retired one\n[[providers]]\n{GONE}\n# about storage\n"
            '[storage]\nroot = "x"\n',
            '[[other]]\na = 1\n\n# about storage\n[storage]\nroot = "x"\n',
            id="after-another-array-of-tables",
        ),
        pytest.param(
            f"providers = [{{{GONE.strip()}}}, {{{KEPT.strip()}}}]  # inline\n",
            f"providers = [{{{KEPT.strip()}}}]  # inline\n",
            id="inline-array",
        ),
    ],
)
def test_prune_keeps_every_comment_of_what_remains(settings, capsys, fresh_registry, before, after):
    settings.config_file.write_text(before)
    assert main(["providers", "prune"]) == 0
    assert ": retired_company.providers:Gridded (module" in capsys.readouterr().out
    assert settings.config_file.read_text() == after
