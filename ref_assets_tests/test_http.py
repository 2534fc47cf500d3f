import pytest

from ref_assets.providers.http import HttpClient, SourceNotFoundError, SourceUnavailableError
from ref_assets_tests.http_server import FileServer


@pytest.fixture
def server(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "file.bin").write_bytes(bytes(range(256)) * 4)
    with FileServer(tmp_path) as running:
        yield running


def client(**overrides) -> tuple[HttpClient, list[float]]:
    slept: list[float] = []
    return HttpClient(backoff=0.1, sleep=slept.append, **overrides), slept


def test_range_reads_and_head(server):
    http, _ = client()
    head = http.head(server.url("/data/file.bin"))
    assert (head.size, head.accepts_ranges) == (1024, True)
    assert head.etag and head.last_modified.endswith("+00:00")
    assert http.get_range(head.url, 10, 13) == bytes([10, 11, 12, 13])
    [request] = server.requests_for("/data/file.bin")
    assert request.range == (10, 13) and request.status == 206


def test_rate_limits_and_outages_are_retried_with_backoff(server):
    http, slept = client()
    server.fail("/data/file.bin", 503, 429, 502)
    assert http.get(server.url("/data/file.bin"))[:3] == bytes([0, 1, 2])
    assert len(slept) == 3 and slept[0] <= slept[1] * 2 and max(slept) <= 0.4
    assert [r.status for r in server.requests_for("/data/file.bin")] == [503, 429, 502, 200]


def test_persistent_failure_is_a_clear_retryable_error(server):
    http, slept = client(max_attempts=3)
    server.fail("/data/file.bin", 503, 503, 503)
    with pytest.raises(SourceUnavailableError, match=r"HTTP 503.*after 3 attempts") as raised:
        http.get(server.url("/data/file.bin"))
    assert raised.value.retryable and len(slept) == 2


def test_missing_files_and_client_errors_are_not_retried(server):
    http, slept = client()
    with pytest.raises(SourceNotFoundError, match="not found"):
        http.get(server.url("/data/absent.bin"))
    assert not http.exists(server.url("/data/absent.bin"))
    server.fail("/data/file.bin", 403)
    with pytest.raises(SourceUnavailableError, match=r"HTTP 403.*not retried"):
        http.get(server.url("/data/file.bin"))
    assert slept == []


def test_connection_refused_is_retried_then_reported(server):
    http, slept = client(max_attempts=2, timeout=2)
    closed = server.url("/x").replace(str(server._httpd.server_address[1]), "1")  # nothing there
    with pytest.raises(SourceUnavailableError, match="ConnectionError"):
        http.get(closed)
    assert len(slept) == 1


def test_a_file_replaced_since_its_head_is_refused_not_mixed(server, tmp_path):
    http, _ = client()
    url = server.url("/data/file.bin")
    head = http.head(url)
    assert http.get_range(url, 0, 3, if_range=head.etag) == bytes([0, 1, 2, 3])
    (tmp_path / "data" / "file.bin").write_bytes(b"a new version of the file")
    with pytest.raises(SourceUnavailableError, match="file changed since it was opened"):
        http.get_range(url, 0, 3, if_range=head.etag)


def test_a_retried_range_request_is_still_a_range_request(server):
    http, _ = client()
    url = server.url("/data/file.bin")
    etag = http.head(url).etag
    server.fail("/data/file.bin", 503)
    assert http.get_range(url, 10, 13, if_range=etag) == bytes([10, 11, 12, 13])
    assert [(r.range, r.status) for r in server.requests_for("/data/file.bin")] == [
        ((10, 13), 503),
        ((10, 13), 206),
    ]


def test_a_body_cut_off_mid_way_is_retried(server):
    http, slept = client()
    server.cut_short("/data/file.bin", 100)
    assert len(http.get(server.url("/data/file.bin"))) == 1024
    assert len(slept) == 1
