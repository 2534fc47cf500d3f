import pytest

from ref_assets.batch import PeriodFailure, PeriodStream
from ref_assets.periods import Period, PeriodType
from ref_assets.providers.synthetic import SyntheticProvider
from ref_assets.secrets import redact
from ref_assets.specs import DatasetSpec
from ref_assets_tests.conftest import spec_dict


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"credentials": {"user": "u", "password": "p"}}, {"credentials": "***"}),
        (
            {"X-API-Key": "k", "key": "v", "Cookie": "c"},
            {"X-API-Key": "***", "key": "***", "Cookie": "***"},
        ),
        (
            {"author": "me", "keys": ["a"], "bbox": [1, 2]},
            {"author": "me", "keys": ["a"], "bbox": [1, 2]},
        ),
        ("ftp://user:p@ss@host/x", "ftp://***@host/x"),
        ("https://a.blob/x?sv=1&sig=ABC&se=2", "https://a.blob/x?sv=1&sig=***&se=2"),
        ("https://h/cb#access_token=T&x=1", "https://h/cb#access_token=***&x=1"),
        ("s3://bucket/key?X-Amz-Signature=f00", "s3://bucket/key?X-Amz-Signature=***"),
        ("https://host/path/file.tif", "https://host/path/file.tif"),
    ],
)
def test_redact(value, expected):
    assert redact(value) == expected


class LeakyProvider(SyntheticProvider):
    def fetch(self, period: Period):
        raise ConnectionError(f"GET https://user:hunter2@data.example/{period.key}?token=hunter2")


def test_provider_errors_are_masked_before_they_are_logged():
    spec = DatasetSpec.model_validate(spec_dict())
    period = Period.from_key(PeriodType.DAILY, "2024-01-02")
    [failure] = list(PeriodStream(spec, LeakyProvider(spec), (period,)))
    assert isinstance(failure, PeriodFailure)
    assert "hunter2" not in failure.error
    assert "https://***@data.example/2024-01-02?token=***" in failure.error
