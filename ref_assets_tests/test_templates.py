"""The packaged example specs: each is a valid spec for an installed provider, builds it without
touching the network, and is served by `ref-assets template`."""

from importlib import resources

import pytest
import requests
import yaml

from ref_assets.cli import main
from ref_assets.config import load_settings
from ref_assets.providers.registry import ProviderRegistry
from ref_assets.specs import DatasetSpec
from ref_assets.vocabulary import load_vocabulary

TEMPLATES = sorted(
    path.name.removesuffix(".yaml")
    for path in resources.files("ref_assets").joinpath("data", "templates").iterdir()
    if path.name.endswith(".yaml")
)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_is_a_valid_spec_that_builds_its_provider_offline(settings, name, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a provider touched the network when it was built")

    monkeypatch.setattr(requests.Session, "request", no_network)
    path = resources.files("ref_assets").joinpath("data", "templates", f"{name}.yaml")
    spec = DatasetSpec.model_validate(yaml.safe_load(path.read_text()))
    vocabulary = load_vocabulary(settings.variables_cv, settings.resolve_path)
    assert vocabulary.problems(spec) == []
    provider = ProviderRegistry.discover().create(spec)
    assert provider.name == spec.provider == name


def test_template_command_lists_and_prints_templates(settings, capsys):
    assert main(["template"]) == 0
    assert capsys.readouterr().out.split() == TEMPLATES
    assert main(["template", TEMPLATES[0]]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert DatasetSpec.model_validate(printed).provider == TEMPLATES[0]
    assert (load_settings().cache_dir / "ref_assets" / "data" / "templates").is_dir()
    assert main(["template", "no_such_template"]) == 2
