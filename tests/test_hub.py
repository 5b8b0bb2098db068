"""densegraph.hub: published weights by name, fetched from a loopback HTTP server into a hub cache."""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from densegraph import hub
from densegraph.cli import main
from densegraph.errors import CheckpointError, DensegraphError
from densegraph.lower.torch import to_torch
from densegraph.lower.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "torchvision-tiny-densenet-legacy-keys.pth"
TINY_SPEC = ROOT / "tests" / "data" / "tiny-digits.yaml"
# torchvision.models.DenseNet(growth_rate=8, block_config=(2, 3, 2), num_init_features=16, num_classes=10)
TV_TINY = """name: tv-tiny
input: {channels: 3, size: 64}
growth_rate: 8
bottleneck: 4
compression: 0.5
stem: {kind: imagenet, channels: 16}
blocks: [2, 3, 2]
head: {classes: 10}
"""


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.headers: dict[str, str] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                path = server.root / self.path.lstrip("/")
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                for key, value in server.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    served = tmp_path / "served"
    served.mkdir()
    running = _Server(served)
    monkeypatch.setenv(hub.MIRROR_ENV, running.url)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    yield running
    running.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tiny_entry(source: str = "torchvision", **changes: object) -> hub.PublishedWeights:
    digest = _sha(FIXTURE)
    fields: dict[str, object] = {
        "spec": "tv-tiny",
        "source": source,
        "variant": "IMAGENET1K_V1",
        "url": f"https://download.pytorch.org/models/tv-tiny-{digest[:8]}.pth",
        "filename": f"tv-tiny-{digest[:8]}.pth",
        "sha256_prefix": digest[:8],
        "labels": "none",
    }
    fields.update(changes)
    return hub.PublishedWeights(**fields)  # type: ignore[arg-type]


def test_the_table_holds_torchvisions_published_files() -> None:
    # the URLs and accuracies of torchvision.models.densenet's DenseNet*_Weights.IMAGENET1K_V1
    names = {s: [e.name for e in entries] for s, entries in hub.PUBLISHED.items()}
    assert set(names) == {"densenet121", "densenet161", "densenet169", "densenet201"}
    entry = hub.published_weights("torchvision", "densenet121")
    assert entry.url == "https://download.pytorch.org/models/densenet121-a639ec97.pth"
    assert entry.sha256_prefix == "a639ec97" and (entry.top1, entry.top5) == (74.434, 91.972)
    assert hub.published_weights("timm", "densenet121").variant == "ra_in1k"
    assert hub.published_weights("timm:tv_in1k", "densenet169").url.endswith(
        "/timm/densenet169.tv_in1k/resolve/main/pytorch_model.bin"
    )
    for spec in names:  # every entry names a shipped spec
        assert (ROOT / "specs" / f"{spec}.yaml").is_file()
    with pytest.raises(CheckpointError, match="no variant 'ra_in1k'"):
        hub.published_weights("timm:ra_in1k", "densenet169")
    with pytest.raises(CheckpointError, match="publishes no weights for the spec 'digits'"):
        hub.published_weights("torchvision", "digits")


def test_download_is_hash_checked_cached_and_reused(server: _Server, tmp_path: Path) -> None:
    entry = _tiny_entry()
    (server.root / "models").mkdir()
    shutil.copy(FIXTURE, server.root / "models" / entry.filename)
    seen: list[tuple[int, int | None]] = []
    path = hub.fetch_weights(entry, progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "torch-home" / "hub" / "checkpoints" / entry.filename
    assert path.read_bytes() == FIXTURE.read_bytes() and seen[-1] == (FIXTURE.stat().st_size,) * 2
    assert server.requests == [f"/models/{entry.filename}"]
    assert hub.fetch_weights(entry) == path and len(server.requests) == 1  # reused, not downloaded again
    # the legacy keys (denselayer1.norm.1.weight) load into the graph's module
    module = to_torch(_tv_tiny_spec(tmp_path), seed=0)
    load_weights(module, path)
    reference = torch.load(FIXTURE, weights_only=True)
    assert torch.equal(module.state_dict()["classifier.weight"], reference["classifier.weight"])
    assert list(path.parent.iterdir()) == [path]  # no partial files left


def _tv_tiny_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "tv-tiny.yaml"
    spec.write_text(TV_TINY)
    return spec


def test_a_wrong_hash_or_no_server_is_one_clear_error(server: _Server, tmp_path: Path) -> None:
    entry = _tiny_entry(sha256_prefix="00000000")
    (server.root / "models").mkdir()
    shutil.copy(FIXTURE, server.root / "models" / entry.filename)
    with pytest.raises(CheckpointError, match="does not match the published 00000000"):
        hub.fetch_weights(entry)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert list(cache.iterdir()) == []  # the bad download is gone
    with pytest.raises(DensegraphError, match="HTTP 404"):
        hub.fetch_weights(_tiny_entry(filename="missing.pth", url="https://x/models/missing.pth"))
    server.close()
    with pytest.raises(DensegraphError, match="cannot download") as info:
        hub.fetch_weights(_tiny_entry())
    assert "\n" not in info.value.format() and "put the published file at" in info.value.format()
    # a cached file that fails the check is reported and left alone (densegraph did not write it)
    cache.mkdir(parents=True, exist_ok=True)
    stranger = cache / entry.filename
    stranger.write_bytes(b"someone else's file")
    with pytest.raises(CheckpointError, match="does not match"):
        hub.fetch_weights(entry)
    assert stranger.read_bytes() == b"someone else's file"


def test_timm_files_are_checked_against_the_hubs_digest(server: _Server, tmp_path: Path) -> None:
    entry = _tiny_entry(
        source="timm",
        variant="ra_in1k",
        url="https://huggingface.co/timm/tv-tiny.ra_in1k/resolve/main/pytorch_model.bin",
        filename="tv-tiny.ra_in1k.bin",
        sha256_prefix=None,
    )
    folder = server.root / "timm" / "tv-tiny.ra_in1k" / "resolve" / "main"
    folder.mkdir(parents=True)
    shutil.copy(FIXTURE, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="without the SHA-256"):
        hub.fetch_weights(entry)
    server.headers["X-Linked-Etag"] = '"' + "f" * 64 + '"'
    with pytest.raises(CheckpointError, match="does not match"):
        hub.fetch_weights(entry)
    digest = _sha(FIXTURE)
    server.headers["X-Linked-Etag"] = f'"{digest}"'
    path = hub.fetch_weights(entry)
    assert path.name == f"tv-tiny.ra_in1k-{digest[:8]}.bin"
    assert hub.fetch_weights(entry) == path and len(server.requests) == 3


def test_cli_weights_by_name_end_to_end(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    entry = _tiny_entry()
    monkeypatch.setitem(hub.PUBLISHED, "tv-tiny", [entry])
    (server.root / "models").mkdir()
    shutil.copy(FIXTURE, server.root / "models" / entry.filename)
    image = tmp_path / "cat.png"
    Image.new("RGB", (80, 70), (200, 30, 90)).save(image)
    spec = _tv_tiny_spec(tmp_path)
    assert main(["predict", str(spec), str(image), "--weights", "torchvision", "--json", "--top", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and '"image"' in out[0]
    monkeypatch.setitem(hub.PUBLISHED, "tv-tiny", [_tiny_entry(sha256_prefix="deadbeef")])
    (tmp_path / "torch-home" / "hub" / "checkpoints" / entry.filename).unlink()
    assert main(["predict", str(spec), str(image), "--weights", "torchvision"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not match the published deadbeef" in err
    assert main(["predict", str(TINY_SPEC), str(image), "--weights", "timm"]) == 2
    assert "timm publishes no weights for the spec 'tiny-digits'" in capsys.readouterr().err
