"""Checks that huggingface_hub and qkv share one cache, both ways, against a fake Hub on loopback.

A model directory is served the way the Hub's resolve URLs serve it (the listing API, HEAD with ETag /
X-Linked-Etag / X-Linked-Size / X-Repo-Commit, a 302 to a storage URL for large files). Then:
1. qkv downloads it (HF_ENDPOINT) into an empty cache, and huggingface_hub, offline, finds every file there
   (snapshot_download(local_files_only=True), scan_cache_dir).
2. huggingface_hub downloads it into another empty cache, and qkv, with HF_HUB_OFFLINE=1, embeds from it
   exactly as from the directory itself.

Usage: python tools/hub/interop.py QKV_BINARY MODEL_DIR SENTENCES.txt   (needs huggingface_hub installed)
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import huggingface_hub
from huggingface_hub import scan_cache_dir, snapshot_download

REPO = "org/tiny-st"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def files_of(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def serve(files):
    large = lambda name: name.endswith((".bin", ".safetensors"))
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    git = {name: hashlib.sha1(data).hexdigest() for name, data in files.items()}

    class Hub(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, headers=(), body=b"", head=False):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)) if not head else dict(headers).get("Content-Length", "0"))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def route(self, head):
            path = self.path.split("?")[0]
            if path.startswith(f"/api/models/{REPO}/revision/"):
                siblings = [{"rfilename": n, "size": len(d)} for n, d in files.items()]
                body = json.dumps({"id": REPO, "sha": COMMIT, "siblings": siblings}).encode()
                return self.reply(200, [("Content-Type", "application/json")], body, head)
            if path.startswith(f"/api/models/{REPO}/tree/"):
                entries = [{"type": "file", "path": n, "size": len(d), "oid": git[n]} for n, d in files.items()]
                return self.reply(200, [("Content-Type", "application/json")], json.dumps(entries).encode(), head)
            if path.startswith("/cdn/"):
                name = next(n for n in files if sha[n] == path[5:])
                return self.reply(200, [], files[name], head)
            prefix = f"/{REPO}/resolve/"
            if not path.startswith(prefix):
                return self.reply(404, [("X-Error-Code", "RepoNotFound")])
            revision, name = path[len(prefix):].split("/", 1)
            if name not in files or revision not in ("main", COMMIT):
                return self.reply(404, [("X-Error-Code", "EntryNotFound")])
            data = files[name]
            common = [("X-Repo-Commit", COMMIT)]
            if large(name):
                # The storage host differs from the endpoint's, as the Hub's CDN does (localhost, not 127.0.0.1).
                port = self.server.server_address[1]
                return self.reply(302, common + [("Location", f"http://localhost:{port}/cdn/{sha[name]}"),
                                                 ("X-Linked-Etag", f'"{sha[name]}"'), ("X-Linked-Size", str(len(data))),
                                                 ("ETag", f'"{git[name]}"')], b"", head)
            headers = common + [("ETag", f'"{git[name]}"'), ("Content-Length", str(len(data)))]
            return self.reply(200, headers, data, head)

        def do_HEAD(self):
            self.route(True)

        def do_GET(self):
            self.route(False)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def qkv(binary, cache, env, *args):
    full = dict(os.environ, HF_HUB_CACHE=str(cache), **env)
    return subprocess.run([binary, "--threads", "1", *args], env=full, capture_output=True, check=True).stdout


def main():
    binary, model_dir, sentences = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    endpoint = serve(files_of(model_dir))
    from_dir = qkv(binary, "/nonexistent", {}, "embed", "--model", str(model_dir), "--input", sentences)
    with tempfile.TemporaryDirectory() as tmp:
        qkv_cache, py_cache = Path(tmp) / "filled-by-qkv", Path(tmp) / "filled-by-python"
        qkv(binary, qkv_cache, {"HF_ENDPOINT": endpoint}, "embed", "--model", REPO, "--input", sentences)
        snapshot = Path(snapshot_download(REPO, cache_dir=qkv_cache, local_files_only=True))
        assert snapshot.name == COMMIT, snapshot
        info = scan_cache_dir(qkv_cache)
        assert not info.warnings, info.warnings
        (repo,) = info.repos
        (revision,) = repo.revisions
        names = sorted(str(f.file_path.relative_to(snapshot)) for f in revision.files)
        assert "config.json" in names and "1_Pooling/config.json" in names, names
        assert revision.refs == {"main"}, revision.refs
        for f in revision.files:
            assert f.blob_path.read_bytes() == (model_dir / f.file_path.relative_to(snapshot)).read_bytes(), f
        print(f"1. huggingface_hub {huggingface_hub.__version__} reads qkv's cache: {len(names)} files, refs {revision.refs}")

        os.environ["HF_ENDPOINT"] = endpoint
        huggingface_hub.constants.ENDPOINT = endpoint
        huggingface_hub.constants.HUGGINGFACE_CO_URL_TEMPLATE = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        snapshot_download(REPO, cache_dir=py_cache, allow_patterns=["*.json", "*.txt", "*.bin"])
        from_python_cache = qkv(binary, py_cache, {"HF_HUB_OFFLINE": "1"}, "embed", "--model", REPO, "--input", sentences)
        assert from_python_cache == from_dir, "embeddings from Python's cache differ from the directory's"
        print("2. qkv embeds from huggingface_hub's cache (offline) exactly as from the directory")


if __name__ == "__main__":
    main()
