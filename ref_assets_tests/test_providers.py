from importlib.metadata import EntryPoint, entry_points

import pytest

from ref_assets.definitions import build_definitions
from ref_assets.providers import registry as registry_module
from ref_assets.providers.registry import ProviderRegistry, ProviderUnavailableError
from ref_assets.resources import installed_providers
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict

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
    assert "does not import" in registry.skipped["gone"]
    assert "missing describe" in registry.skipped["not_a_provider"]
    assert "provider 'gone' skipped" in caplog.text
    with pytest.raises(ProviderUnavailableError, match="provider 'gone' is unavailable") as raised:
        registry.create(DatasetSpec.model_validate(spec_dict(provider="gone")))
    assert "does not import" in str(raised.value)
    assert "available: synthetic" in str(raised.value)


def test_dataset_with_a_missing_provider_is_an_asset_that_fails_clearly(
    settings, write_spec, materialize, monkeypatch, request
):
    write_spec("orphan", provider="retired_provider")
    write_spec("healthy")
    # Only the built-in provider is installed; the cache is per process, so start it afresh.
    synthetic = [e for e in entry_points(group=GROUP) if e.name == "synthetic"]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: synthetic)
    installed_providers.cache_clear()
    request.addfinalizer(installed_providers.cache_clear)
    keys = {k.to_user_string() for k in build_definitions(settings).resolve_all_asset_keys()}
    assert {"orphan", "healthy"} <= keys
    result = materialize("orphan", "2024-01-01", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "orphan: provider 'retired_provider' is unavailable" in (
        failure.step_failure_data.error.to_string()
    )
    assert materialize("healthy", "2024-01-01").success
