"""Model downloads (``videomla models ...``, ``videomla_app.hub``) against a fake Hugging Face hub.

The fake hub is an ``http.server`` on 127.0.0.1 that answers what ``huggingface_hub`` asks for a file:
``HEAD`` and ``GET /{repo}/resolve/{revision}/{path}`` with ``X-Repo-Commit``, ``ETag`` (sha256 for
LFS-like files, a sha1 for small json files), ``X-Linked-Size``, ``Content-Length`` and ``Range``
requests; gated repos answer 401 ``X-Error-Code: GatedRepo`` unless the right token comes. The
manifest is a test one with files of a few kB. ``huggingface_hub`` reads its settings at import (and
the suite runs with HF_HUB_OFFLINE=1), so the in-process tests patch ``huggingface_hub.constants``;
one check runs the real CLI in a subprocess with the environment set.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants
from rich.console import Console
from typer.testing import CliRunner

from videomla_app import hub, models
from videomla_app.cli import app

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_test_token"
runner = CliRunner()


def _blob(seed: int, n: int) -> bytes:
    return bytes((seed * 131 + i * 7 + (i >> 8)) % 256 for i in range(n))


# repo -> {path: bytes}; the shared "wan" pieces are used by both m-a and m-b
REPOS = {
    "acme/dit-a": {"ckpt/model.pt": _blob(1, 40_000)},
    "acme/dit-b": {"model.pt": _blob(2, 12_000)},
    "acme/wan": {"vae/config.json": b'{"z_dim": 16}', "vae/weights.safetensors": _blob(3, 20_000)},
    "acme/gated": {"model.pt": _blob(4, 3_000)},
    "acme/dit-c": {"model.pt": _blob(5, 12_000)},
}


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _file(role, repo, name, **kw):
    return {"role": role, "repo": repo, "filename": name, "revision": "main", "size": None, "sha256": None} | kw


def _manifest(tmp: Path) -> Path:
    wan = [_file("vae", "acme/wan", "vae/config.json"),
           _file("vae", "acme/wan", "vae/weights.safetensors", sha256=_sha(REPOS["acme/wan"]["vae/weights.safetensors"]))]
    dit_a = _file("dit", "acme/dit-a", "ckpt/model.pt", size=40_000, sha256=_sha(REPOS["acme/dit-a"]["ckpt/model.pt"]))

    def model(name, files, components=(), preset="test-mla"):
        return {"name": name, "tier": "download", "preset": preset, "description": f"{name} for tests",
                "licence": "test licence", "min_gpu_gb": 24, "files": files, "components": list(components)}

    data = {"schema": 1, "components": {"wan": {"description": "shared", "licence": "Apache-2.0", "files": wan}},
            "models": [model("m-a", [dit_a], ["wan"]),
                       model("m-b", [_file("dit", "acme/dit-b", "model.pt")], ["wan"], "test-mha"),
                       model("m-gated", [_file("dit", "acme/gated", "model.pt")]),
                       model("m-badsha", [_file("dit", "acme/dit-c", "model.pt", sha256="0" * 64)]),
                       model("m-badsize", [_file("dit", "acme/dit-c", "model.pt", size=11_999)]),
                       {"name": "test-mla", "tier": "dev", "preset": "test-mla", "description": "dev",
                        "licence": "Apache-2.0", "min_gpu_gb": None, "files": [], "components": []}]}
    path = tmp / "models.json"
    path.write_text(json.dumps(data))
    return path


class FakeHub:
    """The resolve endpoint of the hub, with switches: drop a connection half-way once, serve wrong
    bytes for a file (with the right ETag, as a broken proxy would), gate a repo behind a token."""

    def __init__(self):
        self.log: list[tuple[str, str, str | None]] = []  # (method, repo/path, Range header)
        self.drop_once: set[str] = set()
        self.tamper: dict[str, bytes] = {}
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub_.serve(self, head=True)

            def do_GET(self):
                hub_.serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def gets(self, key: str) -> list[str | None]:
        return [r for m, k, r in self.log if m == "GET" and k == key]

    def serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        parts = h.path.split("?")[0].lstrip("/").split("/")
        repo, rev, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        key = f"{repo}/{path}"
        self.log.append(("HEAD" if head else "GET", key, h.headers.get("Range")))
        if repo == "acme/gated" and h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._error(h, 401, "GatedRepo", "Access to model acme/gated is restricted.")
        if parts[2] != "resolve" or rev not in ("main", COMMIT) or path not in REPOS.get(repo, {}):
            return self._error(h, 404, "EntryNotFound", "Entry not found")
        data = REPOS[repo][path]
        etag = hashlib.sha1(data).hexdigest() if path.endswith(".json") else _sha(data)
        data = self.tamper.get(key, data)
        start = int(h.headers["Range"].split("=")[1].split("-")[0]) if h.headers.get("Range") else 0
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("ETag", f'"{etag}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.send_header("Content-Length", str(len(data) - start))
        h.end_headers()
        if head:
            return
        if key in self.drop_once:  # promise the whole file, send 40 % of it, hang up
            self.drop_once.discard(key)
            h.wfile.write(data[start:start + len(data) * 2 // 5])
            h.wfile.flush()
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        h.wfile.write(data[start:])

    @staticmethod
    def _error(h, code: int, error_code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", message)
        h.send_header("X-Repo-Commit", COMMIT)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)


@pytest.fixture()
def fake(tmp_path, monkeypatch):
    """A fake hub, an empty HF_HOME under tmp_path, the test manifest as the registry, progress bars on."""
    server = FakeHub()
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub: draw the bars even without a terminal
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)  # kB files behave like GB files in 10 MB chunks
    monkeypatch.setattr(models, "REGISTRY", models.load_manifest(_manifest(tmp_path)))
    server.home = home
    yield server
    server.server.shutdown()
    server.server.server_close()


def _cli(*args, input=None):
    return runner.invoke(app, list(args), input=input)


def _one_line_error(r) -> str:
    """The failure is one 'error:' line, the last thing printed (progress lines may come before it)."""
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1, r.output
    assert [x for x in lines if "error" in x.lower()] == lines[-1:] and lines[-1].startswith("error:"), r.output
    return lines[-1]


def _status(name: str) -> dict:
    r = _cli("models", "list", "--json")
    assert r.exit_code == 0, r.output
    return next(m for m in json.loads(r.output)["models"] if m["name"] == name)


def test_download_lands_in_the_hf_cache_with_progress(fake):
    r = _cli("models", "download", "m-a")
    assert r.exit_code == 0, r.output
    assert "[1/3] acme/dit-a  ckpt/model.pt" in r.output and "100%" in r.output  # our lines + hf progress bars
    assert "done: m-a  (3 files, 60.01 kB in " in r.output
    snap = fake.home / "hub" / "models--acme--dit-a" / "snapshots" / COMMIT
    assert (snap / "ckpt" / "model.pt").read_bytes() == REPOS["acme/dit-a"]["ckpt/model.pt"]
    paths = json.loads(_cli("models", "path", "m-a", "--json").output)
    assert paths == {"dit": str(snap / "ckpt" / "model.pt"),
                     "vae": str(fake.home / "hub" / "models--acme--wan" / "snapshots" / COMMIT / "vae")}
    assert hub.ensure_downloaded("m-a", yes=False, console=Console(file=io.StringIO())) == \
        {k: Path(v) for k, v in paths.items()}
    n_requests = len(fake.log)
    r = _cli("models", "download", "m-a")  # already here: no request at all
    assert r.exit_code == 0 and "already downloaded" in r.output and len(fake.log) == n_requests


def test_dropped_connection_resumes_with_a_range_request(fake):
    key = "acme/dit-a/ckpt/model.pt"
    fake.drop_once.add(key)
    paths = hub.download(models.get_entry("m-a"), Console(file=io.StringIO()))
    first, second = fake.gets(key)
    assert first is None and second is not None
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= 16_000  # at most the 40 % the server sent before hanging up
    assert paths["dit"].read_bytes() == REPOS["acme/dit-a"]["ckpt/model.pt"]


@pytest.mark.parametrize("model, why", [("m-badsha", "sha256"), ("m-badsize", "11999"), ("m-a", "sha256")])
def test_a_wrong_file_is_rejected_and_deleted(fake, model, why):
    if model == "m-a":  # right ETag, wrong bytes: caught by the hub's LFS sha256 (the manifest has none)
        fake.tamper["acme/wan/vae/weights.safetensors"] = _blob(9, 20_000)
        models.REGISTRY["m-a"] = models.ModelEntry(
            "m-a", "test-mla", "download", "", tuple(f for f in models.REGISTRY["m-a"].files if f.role == "vae"))
    r = _cli("models", "download", model)
    text = _one_line_error(r)
    assert why in text and "the file was deleted" in text and f"videomla models download {model}" in text
    left = [p for p in (fake.home / "hub").rglob("*") if p.is_file() and p.suffix in (".pt", ".safetensors")]
    blobs = [p for p in (fake.home / "hub").rglob("blobs/*") if p.stat().st_size > 1000]
    assert left == [] and blobs == []


def test_offline_mode_is_one_clear_line(fake, tmp_path):
    fake.log.clear()
    constants.HF_HUB_OFFLINE = True  # restored by the fixture's monkeypatch
    text = _one_line_error(_cli("models", "download", "m-a"))
    assert "HF_HUB_OFFLINE" in text and "videomla models download m-a" in text and fake.log == []
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": fake.url,
           "VIDEOMLA_MANIFEST": str(tmp_path / "models.json"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    p = subprocess.run([sys.executable, "-m", "videomla_app", "models", "download", "m-b"], env=env,
                       check=False, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and p.stderr.strip().count("\n") == 0, p.stderr
    assert "HF_HUB_OFFLINE" in p.stderr and "Traceback" not in p.stderr and fake.log == []


def test_gated_repo_asks_for_the_licence_and_a_login(fake, monkeypatch):
    text = _one_line_error(_cli("models", "download", "m-gated"))
    assert "accept its licence" in text and "HF_TOKEN" in text and "hf auth login" in text
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub sends it: the same command now works
    r = _cli("models", "download", "m-gated")
    assert r.exit_code == 0, r.output


def test_generate_offers_the_download(fake, monkeypatch, tmp_path):
    args = ["generate", "a red ball", "--model", "m-b", "--seconds", "1", "--out", str(tmp_path / "v.mp4")]
    text = _one_line_error(_cli(*args))  # not a terminal, no --yes: say what to run
    assert "videomla models download m-b" in text and "--yes" in text and fake.gets("acme/dit-b/model.pt") == []
    monkeypatch.setattr(hub, "_interactive", lambda: True)
    r = _cli(*args, input="n\n")
    assert r.exit_code == 1 and "[y/N]" in r.output and fake.gets("acme/dit-b/model.pt") == []
    r = _cli(*args, input="y\n")
    assert "[y/N]" in r.output and "[1/3] acme/dit-b  model.pt" in r.output and _status("m-b")["downloaded"]
    assert "weights are not downloaded" not in r.output  # load_pipeline found the files


def test_list_and_remove_keep_pieces_another_model_needs(fake):
    assert _status("m-a")["status"] == "not downloaded" and _status("test-mla")["status"] == "random weights"
    for name in ("m-a", "m-b"):
        assert _cli("models", "download", name).exit_code == 0
    a = _status("m-a")
    assert a["status"] == "downloaded" and a["bytes_on_disk"] == 40_000 + 20_000 + 13 and a["size"] == "60.01 kB"
    table = _cli("models").output  # bare 'models' lists
    assert "m-a" in table and "downloaded" in table and "60.01 kB" in table

    r = _cli("models", "remove", "m-a")
    assert r.exit_code == 0 and "kept 2 shared files still used by m-b" in r.output and "removed m-a: 1 files" in r.output
    assert not (fake.home / "hub" / "models--acme--dit-a").exists()
    assert _status("m-a")["status"] == "partial: 2/3 files" and _status("m-b")["status"] == "downloaded"

    r = _cli("models", "remove", "m-b")  # nobody else needs the Wan pieces now: they go too
    assert r.exit_code == 0 and "removed m-b: 3 files" in r.output
    assert sorted(p.name for p in (fake.home / "hub").iterdir() if p.name.startswith("models--")) == []

    for name in ("m-a", "m-b"):
        _cli("models", "download", name)
    r = _cli("models", "remove", "m-b", "--shared")
    assert r.exit_code == 0 and "removed m-b: 3 files" in r.output
    assert _status("m-a")["status"] == "partial: 1/3 files"
    text = _one_line_error(_cli("models", "path", "m-a"))
    assert "videomla models download m-a" in text
    r = _cli("models", "remove", "test-mla")
    assert r.exit_code == 2 and "no downloaded files" in r.output
