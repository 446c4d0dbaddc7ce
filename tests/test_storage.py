"""The Store backends: a local directory, and Azure Blob against a real Azurite."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote

import numpy as np
import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerClient,
    ResourceTypes,
    generate_account_sas,
)

from tests.azurite import ACCOUNT, ACCOUNT_KEY, AzuriteServer, free_port
from tests.azurite import azurite as azurite_fixture  # noqa: F401
from videopanda_cluster.storage import (
    LocalStore,
    Store,
    StoreAccessDenied,
    StoreUnavailable,
    open_store,
    safe_key_component,
    validate_key,
)
from videopanda_cluster.storage.azure import READ_AHEAD, AzureBlobStore
from videopanda_cluster.video.extract import PreprocessOptions, extract
from videopanda_cluster.video.samples import SampleSpec, write_video

MiB = 1024 * 1024


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def azure_store(server: AzuriteServer, prefix: str | None = None, **options) -> AzureBlobStore:
    """A store in the shared ``tests`` container, under a fresh prefix unless one is given."""
    options = {"retry_total": 2, "retry_backoff": 0.05, "timeout": 10, **options}
    prefix = uuid.uuid4().hex if prefix is None else prefix
    return AzureBlobStore("tests", prefix, connection_string=server.connection_string, **options)


@pytest.fixture(params=["local", "azure"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    return azure_store(request.getfixturevalue("azurite"))


def temp_files(store: Store) -> list[Path]:
    return list(store.root.rglob(".tmp-*")) if isinstance(store, LocalStore) else []


# --- basic operations -------------------------------------------------------------------------


def test_put_get_exists_size_delete(store):
    key = "jobs/j1/results/shard-0001.jsonl"
    assert not store.exists(key)
    store.put(key, b"hello")
    assert store.exists(key)
    assert store.get(key) == b"hello"
    assert store.size(key) == 5
    store.put(key, b"a longer replacement")
    assert store.get(key) == b"a longer replacement"
    assert store.size(key) == 20
    store.put(key, b"")
    assert store.exists(key) and store.get(key) == b"" and store.size(key) == 0
    with store.open_read(key) as fh:
        assert fh.read() == b""
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # missing: no error
    assert not store.exists("jobs/j1")  # a "folder" is not an object
    store.put("vidéos/名前 ü.json", b"{}")
    assert store.get("vidéos/名前 ü.json") == b"{}"
    assert temp_files(store) == []


@pytest.mark.parametrize("method", ["get", "size", "open_read"])
def test_missing_key_raises_key_error(store, method):
    with pytest.raises(KeyError) as exc:
        getattr(store, method)("no/such/key")
    assert exc.value.args == ("no/such/key",)


def test_list_is_sorted_recursive_and_prefix_filtered(store):
    keys = ["b", "a/2/y", "a/1", "ab", "a/2/x", "a/10", "c/deep/er/still"]
    for key in keys:
        store.put(key, key.encode())
    assert store.list() == sorted(keys)
    assert store.list("a/") == ["a/1", "a/10", "a/2/x", "a/2/y"]
    assert store.list("a/1") == ["a/1", "a/10"]
    assert store.list("a") == ["a/1", "a/10", "a/2/x", "a/2/y", "ab"]
    assert store.list("a/2/x") == ["a/2/x"]
    assert store.list("c/") == ["c/deep/er/still"]
    assert store.list("zzz/") == []
    store.delete("a/10")
    assert store.list("a/1") == ["a/1"]
    for prefix in ("../", "/a", "a//", "a\\b"):
        with pytest.raises(ValueError, match="invalid store prefix"):
            store.list(prefix)


# --- atomicity ---------------------------------------------------------------------------------


def test_overwrite_is_atomic_for_concurrent_readers(store):
    versions = [payload(20 * MiB, seed) for seed in (1, 2)]
    digests = {hashlib.sha256(v).hexdigest(): n for n, v in enumerate(versions)}
    store.put("big.bin", versions[0])
    seen: list[int] = []
    torn: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        try:
            while not done.is_set():
                data = store.get("big.bin")
                digest = hashlib.sha256(data).hexdigest()
                if digest in digests:
                    seen.append(digests[digest])
                else:
                    torn.append((len(data), digest))
        except BaseException as exc:
            errors.append(exc)

    def wait_for_reads(count: int) -> None:
        end = time.monotonic() + 30
        while len(seen) + len(torn) < count and not errors and time.monotonic() < end:
            time.sleep(0.001)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(1, 9):
            store.put("big.bin", versions[n % 2])  # while the reader is reading
            wait_for_reads(len(seen) + len(torn) + 2)  # the 2nd read began after this put
    finally:
        done.set()
        thread.join(timeout=60)
    assert not errors
    assert torn == []  # never a partial or mixed object
    assert set(seen) == {0, 1}
    assert store.get("big.bin") == versions[0]  # the last put (n = 8)
    assert temp_files(store) == []


def test_open_read_never_mixes_versions(store):
    old, new = payload(6 * MiB, 3), payload(6 * MiB, 4)
    store.put("clip.bin", old)
    with store.open_read("clip.bin") as fh:
        head = fh.read(10)
        store.put("clip.bin", new)  # replaced while a reader is open
        try:
            rest = fh.read()
        except OSError as exc:  # Azure: the reader is pinned to the version it opened
            assert "replaced while being read" in str(exc)
        else:  # local: the open file keeps the old inode
            assert head + rest == old
    assert store.get("clip.bin") == new


def test_put_if_absent_creates_only_once(store):
    assert store.put_if_absent("shards/0001", b"first") is True
    assert store.put_if_absent("shards/0001", b"second") is False
    assert store.get("shards/0001") == b"first"
    store.delete("shards/0001")
    assert store.put_if_absent("shards/0001", b"third") is True
    assert store.get("shards/0001") == b"third"

    results: dict[int, bool] = {}
    barrier = threading.Barrier(8)

    def commit(i: int) -> None:
        barrier.wait()
        results[i] = store.put_if_absent("shards/0002", f"writer {i}".encode() * 1000)

    threads = [threading.Thread(target=commit, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [i for i, created in results.items() if created]
    assert len(results) == 8 and len(winners) == 1
    assert store.get("shards/0002") == f"writer {winners[0]}".encode() * 1000
    assert temp_files(store) == []


def test_azure_large_objects_use_staged_blocks_atomically(azurite):
    store = azure_store(azurite, single_put_size=1 * MiB)
    first, second = payload(9 * MiB + 5, 5), payload(9 * MiB + 7, 6)
    assert store.put_if_absent("large.bin", first) is True
    assert store.put_if_absent("large.bin", second) is False
    assert store.get("large.bin") == first
    store.put("large.bin", second)
    assert store.get("large.bin") == second
    blob = ContainerClient.from_connection_string(azurite.connection_string, "tests")
    committed, uncommitted = blob.get_blob_client(f"{store.prefix}/large.bin").get_block_list()
    assert len(committed) > 1 and not uncommitted  # staged blocks + one commit


# --- ranged reads ------------------------------------------------------------------------------


def test_open_read_matches_bytes_under_reads_and_seeks(store):
    data = payload(9 * MiB + 123, 7)
    store.put("seek.bin", data)
    rng = random.Random(11)
    ref = io.BytesIO(data)
    with store.open_read("seek.bin") as fh:
        assert fh.readable() and fh.seekable() and not fh.writable()
        for _ in range(150):
            op = rng.random()
            if op < 0.45:
                n = rng.choice([0, 1, 100, 4095, 65536, 1 * MiB, 5 * MiB, -1, None])
                assert fh.read(n) == ref.read(n)
            elif op < 0.65:
                target = rng.randrange(len(data) + 100)
                assert fh.seek(target) == ref.seek(target) == target
            elif op < 0.8:
                delta = rng.randrange(-ref.tell(), len(data) - ref.tell() + 1)
                assert fh.seek(delta, os.SEEK_CUR) == ref.seek(delta, os.SEEK_CUR)
            else:
                delta = -rng.randrange(len(data) + 1)
                assert fh.seek(delta, os.SEEK_END) == ref.seek(delta, os.SEEK_END)
            assert fh.tell() == ref.tell()
        with pytest.raises((OSError, ValueError)):
            fh.seek(-1)
    assert fh.closed
    with pytest.raises(ValueError):
        fh.read(1)


def test_azure_ranged_read_downloads_only_a_window(azurite):
    store = azure_store(azurite)
    data = payload(30 * MiB, 8)
    store.put("big.bin", data)
    with store.open_read("big.bin") as fh:
        assert fh.bytes_fetched == 0
        fh.seek(20_000_000)
        assert fh.read(100) == data[20_000_000:20_000_100]
        assert fh.requests == 1
        assert 100 <= fh.bytes_fetched <= READ_AHEAD
        fh.seek(20_000_050)  # inside the read-ahead buffer: no new request
        assert fh.read(1000) == data[20_000_050:20_001_050]
        assert fh.requests == 1
        fh.seek(-100, os.SEEK_END)
        assert fh.read(1000) == data[-100:]
        assert fh.read(10) == b""
        assert fh.requests == 2
        assert fh.bytes_fetched <= READ_AHEAD + 100 < len(data) // 7


VIDEOS = [
    SampleSpec("clip.mp4", 320, 240, 30, Fraction(30), "libx264", rotation=90),
    SampleSpec("clip.mkv", 176, 144, 20, Fraction(25), "mpeg4"),
]


@pytest.mark.parametrize("spec", VIDEOS, ids=[s.name for s in VIDEOS])
def test_pyav_decodes_a_video_through_open_read(store, tmp_path, spec):
    path = tmp_path / spec.filename
    write_video(path, spec, seed=11)
    store.put(f"videos/{spec.filename}", path.read_bytes())
    options = PreprocessOptions(isolate=False)
    direct = extract(path, options)
    with store.open_read(f"videos/{spec.filename}") as fh:
        via_store = extract(fh, options)
    assert via_store.provenance == direct.provenance
    assert via_store.provenance.num_frames == spec.frames
    assert np.array_equal(via_store.frames, direct.frames)


# --- keys --------------------------------------------------------------------------------------

BAD_KEYS = {
    "empty": "",
    "absolute": "/etc/passwd",
    "parent": "../x",
    "inner-parent": "a/../../b",
    "only-parent": "..",
    "dot": "./a",
    "empty-component": "a//b",
    "trailing-slash": "a/",
    "trailing-dot": "a/b.",
    "backslash": "a\\b",
    "nul": "a\x00b",
    "newline": "a\nb",
    "delete-char": "a\x7fb",
    "c1-control": "a\x85b",
    "too-long": "ab/" * 400 + "c",
    "component-too-long": "x" * 256,
    "lone-surrogate": "a\udc80",
}
GOOD_KEYS = [
    "a",
    "b/c/d.mp4",
    "vidéo/名前 ü.mp4",
    ".hidden/.x",
    "a..b/...c",
    "%2E%2E/x",
    "/".join(["x" * 255] * 3) + "/" + "y" * 200,  # 968 bytes
    "é" * 127 + "/" + "z" * 200,  # 1024 bytes exactly
]


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_validate_key_rejects_with_a_clear_message(key):
    with pytest.raises(ValueError, match="invalid store key") as exc:
        validate_key(key)
    assert len(str(exc.value)) < 400  # a 1 KB key is abbreviated, not echoed


def test_every_store_method_validates_keys(store):
    for key in BAD_KEYS.values():
        for call in (
            lambda k: store.put(k, b"x"),
            lambda k: store.put_if_absent(k, b"x"),
            store.get,
            store.exists,
            store.delete,
            store.size,
            store.open_read,
        ):
            with pytest.raises(ValueError, match="invalid store key"):
                call(key)
    assert store.list() == []


def test_valid_keys_round_trip(store):
    for n, key in enumerate(GOOD_KEYS):
        assert validate_key(key) == key
        store.put(key, str(n).encode())
    assert store.list() == sorted(GOOD_KEYS)
    assert [store.get(k) for k in GOOD_KEYS] == [str(n).encode() for n in range(len(GOOD_KEYS))]


def _hostile_ids() -> list[str]:
    ids = [
        "../etc/passwd",
        "/abs",
        "/",
        "a\x00b",
        "a b",
        "a/b",
        "a\\b",
        ".",
        "..",
        "...",
        "",
        " ",
        "%",
        "%25",
        "%2E",
        "%empty",
        ".hidden",
        "trailing.",
        "abc-1_2.mp4",
        "vidéo 名前 🎬",
        "\udc80",  # a lone surrogate (as os.fsdecode produces)
        "x" * 10_000,
        "x" * 10_001,
        "x" * 9_999 + "y",
        "a" * 120,
        "a" * 121,
        "é" * 40,
        "é" * 41,
        "\n\t\r\x7f",
    ]
    ids.append(safe_key_component("x" * 10_000))  # an id that spells another id's result
    ids.append(safe_key_component("../etc/passwd"))
    rng = random.Random(13)
    alphabet = "ab./\\%-_ \x00é名🎬"
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randrange(60))) for _ in range(2000)]
    ids += [
        "".join(rng.choice(alphabet) for _ in range(rng.randrange(100, 400))) for _ in range(200)
    ]
    return list(dict.fromkeys(ids))


def test_safe_key_component_is_safe_distinct_and_stable():
    ids = _hostile_ids()
    results = [safe_key_component(text) for text in ids]
    assert len(set(results)) == len(ids)  # distinct inputs, distinct components
    for text, result in zip(ids, results, strict=True):
        assert validate_key(result) == result
        assert "/" not in result and result not in ("", ".", "..")
        assert not result.startswith(".") and not result.endswith(".")
        assert re.fullmatch(r"[A-Za-z0-9._%-]+", result)
        assert len(result) <= 137
        assert safe_key_component(text) == result
        if len(result) <= 120 and text:  # uncut results decode back to the input
            assert unquote(result, errors="surrogatepass") == text
    assert safe_key_component("abc-1_2.mp4") == "abc-1_2.mp4"  # safe ids are kept as they are
    assert safe_key_component("a" * 120) == "a" * 120
    assert re.fullmatch(r"x{120}-[0-9a-f]{16}", safe_key_component("x" * 10_000))
    assert safe_key_component("../etc/passwd") == "%2E.%2Fetc%2Fpasswd"
    assert safe_key_component("a\x00b") == "a%00b"


def test_safe_key_components_are_usable_keys(store):
    ids = _hostile_ids()[:60]
    for text in ids:
        store.put(f"videos/{safe_key_component(text)}.json", text.encode("utf-8", "surrogatepass"))
    keys = store.list("videos/")
    assert len(keys) == len(ids)
    for text in ids:
        data = store.get(f"videos/{safe_key_component(text)}.json")
        assert data.decode("utf-8", "surrogatepass") == text


def test_local_store_stays_inside_its_root(tmp_path):
    store = LocalStore(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (store.root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the store root"):
        store.get("link/secret")
    with pytest.raises(ValueError, match="outside the store root"):
        store.put("link/new", b"x")
    assert not (outside / "new").exists()


def test_local_store_reports_key_folder_conflicts(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.put("a", b"1")
    with pytest.raises(FileExistsError, match="cannot hold both"):
        store.put("a/b", b"2")
    store.put("c/d", b"3")
    with pytest.raises(FileExistsError, match="cannot hold both"):
        store.put("c", b"4")
    assert store.list() == ["a", "c/d"] and temp_files(store) == []


def test_local_store_hides_stale_temp_files(tmp_path):
    store = LocalStore(tmp_path / "root")
    store.put("a/b", b"1")
    (store.root / "a" / f".tmp-{uuid.uuid4().hex}").write_bytes(b"half a write")  # a crashed put
    assert store.list() == ["a/b"]


# --- URLs --------------------------------------------------------------------------------------


def test_local_url_round_trips_through_open_store(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "dir with spaces" / "ünï%20")
    store.put("k", b"v")
    assert store.url.startswith("file:///") and " " not in store.url
    assert repr(store) == f"LocalStore({store.url!r})"
    for url in (store.url, str(store.root)):
        again = open_store(url)
        assert isinstance(again, LocalStore) and again.root == store.root
        assert again.get("k") == b"v"
    monkeypatch.chdir(tmp_path)
    assert open_store("relative/dir").root == tmp_path / "relative" / "dir"


def test_azure_url_round_trips_through_open_store(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    store = open_store("az://opened/some/prefix")
    assert isinstance(store, AzureBlobStore) and store.url == "az://opened/some/prefix"
    store.put("k", b"v")
    assert open_store(store.url).get("k") == b"v"
    assert open_store("az://opened").get("some/prefix/k") == b"v"
    assert open_store("az://opened/").url == "az://opened"
    raw = open_store("az://opened/videos/%2E.%2Fid")  # taken as written, like video URIs
    assert raw.url == "az://opened/videos/%2E.%2Fid"


def test_azure_account_url_with_a_credential(azurite, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", f"http://127.0.0.1:{azurite.port}/{ACCOUNT}")
    credential = AzureNamedKeyCredential(ACCOUNT, ACCOUNT_KEY)
    name = f"c{uuid.uuid4().hex[:16]}"
    store = open_store(f"az://{name}/p", credential=credential)
    store.put("k", b"v")
    with_string = AzureBlobStore(name, "p", connection_string=azurite.connection_string)
    assert with_string.get("k") == b"v"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("s3://bucket/x", "unsupported store URL scheme 's3'"),
        ("az://", "without a container"),
        ("az:///x", "without a container"),
        ("az://Bad_Name/x", "invalid Azure container name"),
        ("az://ab", "invalid Azure container name"),
        ("az://c-ok/../x", "invalid store prefix"),
        ("file://otherhost/x", "remote host"),
        ("file://", "absolute path"),
    ],
)
def test_open_store_rejects_invalid_urls(url, message, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "unused")
    with pytest.raises(ValueError, match=re.escape(message)):
        open_store(url)


def test_open_store_az_needs_credentials_and_hides_queries(monkeypatch):
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_URL",
        "AZURE_STORAGE_ACCOUNT",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="AZURE_STORAGE_CONNECTION_STRING"):
        open_store("az://container/prefix")
    for url in ("az://container/prefix?sv=1&sig=TOPSECRET", "https://a.b/c?sig=TOPSECRET"):
        with pytest.raises(ValueError) as exc:
            open_store(url)
        assert "TOPSECRET" not in str(exc.value)


# --- secrets -----------------------------------------------------------------------------------


def _text_of(exc: BaseException) -> str:
    return str(exc) + repr(exc) + "".join(traceback.format_exception(exc))


def _assert_hidden(secret: str, *texts: str) -> None:
    for text in texts:
        for form in (secret, quote(secret, safe=""), quote(secret)):
            assert form not in text


def test_secrets_never_in_url_repr_or_errors(azurite):
    store = AzureBlobStore("tests", "secrets", connection_string=azurite.connection_string)
    _assert_hidden(ACCOUNT_KEY, store.url, repr(store), str(store))
    assert "AccountKey" not in repr(store)
    with pytest.raises(KeyError) as missing:
        store.get("missing")
    with pytest.raises(ValueError) as bad_key:
        store.put("../x", b"")
    _assert_hidden(ACCOUNT_KEY, _text_of(missing.value), _text_of(bad_key.value))

    endpoint = f"http://127.0.0.1:{azurite.port}/{ACCOUNT}"
    sas = generate_account_sas(
        ACCOUNT,
        ACCOUNT_KEY,
        ResourceTypes(service=True, container=True, object=True),
        AccountSasPermissions(read=True, write=True, list=True, create=True, delete=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    signature = parse_qs(sas)["sig"][0]
    with_sas = AzureBlobStore(
        "tests", "sas", connection_string=f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"
    )
    with_sas.put("k", b"v")
    assert with_sas.get("k") == b"v"
    _assert_hidden(signature, with_sas.url, repr(with_sas))

    dead = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    for connection_string, secret in (
        (
            azurite.connection_string.replace(endpoint, dead),
            ACCOUNT_KEY,
        ),
        (f"BlobEndpoint={dead};SharedAccessSignature={sas}", signature),
    ):
        with pytest.raises(StoreUnavailable, match="Azure store az://tests unavailable") as down:
            AzureBlobStore(
                "tests", connection_string=connection_string, retry_total=1, retry_backoff=0.01
            )
        _assert_hidden(secret, _text_of(down.value))

    wrong_key = ACCOUNT_KEY[:10] + ("A" if ACCOUNT_KEY[10] != "A" else "B") + ACCOUNT_KEY[11:]
    wrong = azurite.connection_string.replace(ACCOUNT_KEY, wrong_key)
    with pytest.raises(StoreAccessDenied, match="refused access") as denied:
        AzureBlobStore("tests", connection_string=wrong)  # a fault of the environment, not data
    assert "403" in str(denied.value)
    _assert_hidden(wrong_key, _text_of(denied.value))

    malformed = "no-fields-here;AccountKey=" + ACCOUNT_KEY
    with pytest.raises(ValueError, match="connection string") as invalid:
        AzureBlobStore("tests", connection_string=malformed)
    _assert_hidden(ACCOUNT_KEY, _text_of(invalid.value))


def test_azure_creates_a_missing_container(azurite):
    name = f"c{uuid.uuid4().hex[:16]}"
    client = ContainerClient.from_connection_string(azurite.connection_string, name)
    assert not client.exists()
    AzureBlobStore(name, connection_string=azurite.connection_string).put("k", b"v")
    assert client.exists()
    assert AzureBlobStore(name, connection_string=azurite.connection_string).get("k") == b"v"
    for bad in ("Bad_Name", "ab", "a--b", "-ab", "ab-", "x" * 64):
        with pytest.raises(ValueError, match="invalid Azure container name"):
            AzureBlobStore(bad, connection_string=azurite.connection_string)


# --- outages -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_azurite(tmp_path_factory):
    """An Azurite of this module's own, which the outage tests stop and restart."""
    with AzuriteServer(tmp_path_factory.mktemp("azurite-outage") / "data") as server:
        yield server


@pytest.mark.slow
def test_long_outage_raises_store_unavailable_then_recovers(private_azurite):
    server = private_azurite
    server.start()
    store = azure_store(server, retry_total=3, retry_backoff=0.1, timeout=2)
    store.put("kept/a", b"alpha")
    store.put("kept/b", payload(6 * MiB, 9))
    reader = store.open_read("kept/b")
    reader.read(10)
    port = server.port
    server.stop()
    try:
        for operation in (
            lambda: store.get("kept/a"),
            lambda: store.put("kept/c", b"gamma"),
            lambda: store.put_if_absent("kept/d", b"delta"),
            lambda: store.list("kept/"),
            lambda: store.exists("kept/a"),
            lambda: store.size("kept/a"),
            lambda: store.delete("kept/a"),
            lambda: reader.read(),  # needs a fetch beyond its 4 MiB buffer
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match=re.escape(store.url)) as down:
                operation()
            elapsed = time.monotonic() - started
            assert 0.5 < elapsed < 5  # retried (0.1 + 0.2 + 0.4 s ± 20 %), then gave up
            _assert_hidden(ACCOUNT_KEY, _text_of(down.value))
    finally:
        server.start()
    assert server.port == port
    assert store.get("kept/a") == b"alpha"
    assert store.get("kept/b") == payload(6 * MiB, 9)
    assert store.list("kept/") == ["kept/a", "kept/b"]
    store.put("kept/c", b"gamma")
    assert store.get("kept/c") == b"gamma"


def test_short_outage_is_retried_without_loss(private_azurite):
    server = private_azurite
    server.start()
    store = azure_store(server, retry_total=8, retry_backoff=0.2, timeout=5)
    before, during = payload(2 * MiB, 10), payload(2 * MiB, 11)
    store.put("s/before", before)
    server.stop()
    restart_errors: list[BaseException] = []

    def restart_soon() -> None:
        try:
            time.sleep(1.0)
            server.start()
        except BaseException as exc:
            restart_errors.append(exc)

    restarter = threading.Thread(target=restart_soon)
    started = time.monotonic()
    restarter.start()
    try:
        store.put("s/during", during)  # retried until the server is back
        got = store.get("s/before")
    finally:
        restarter.join(timeout=60)
    assert not restart_errors
    assert time.monotonic() - started >= 1.0  # the put really spanned the outage
    assert got == before
    assert store.get("s/during") == during
    assert store.list("s/") == ["s/before", "s/during"]


def test_put_if_version_is_a_compare_and_swap(store):
    store.put("lease/a.json", b"v1")
    first = store.get_versioned("lease/a.json")
    assert first.data == b"v1"
    second = store.put_if_version("lease/a.json", b"v2", first.version)
    assert second and second != first.version
    assert store.get_versioned("lease/a.json").version == second
    assert store.put_if_version("lease/a.json", b"v3", first.version) is None  # stale version
    assert store.get("lease/a.json") == b"v2"
    # a retried write finds its own bytes there: success, with the current version
    assert store.put_if_version("lease/a.json", b"v2", first.version) == second
    store.put("lease/a.json", b"v2")  # every write makes a new version, even of the same bytes
    assert store.put_if_version("lease/a.json", b"v4", second) is None
    assert store.put_if_version("lease/none.json", b"x", second) is None
    assert not store.exists("lease/none.json")
    with pytest.raises(KeyError):
        store.get_versioned("lease/none.json")

    base = store.get_versioned("lease/a.json").version
    results: dict[int, str | None] = {}
    barrier = threading.Barrier(8)

    def swap(i: int) -> None:
        barrier.wait()
        results[i] = store.put_if_version("lease/a.json", f"writer {i}".encode(), base)

    threads = [threading.Thread(target=swap, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [i for i, version in results.items() if version]
    assert len(results) == 8 and len(winners) == 1
    now = store.get_versioned("lease/a.json")
    assert now.data == f"writer {winners[0]}".encode() and now.version == results[winners[0]]
    assert temp_files(store) == []
