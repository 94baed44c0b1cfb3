# Copyright (c) actuated.registry contributors
# SPDX-License-Identifier: MIT
"""The local limit: the mirror's own cached blobs as static files, laid out as a read-only registry API for nginx.

``/v2/`` answers 200; ``/v2/<name>/manifests/<tag or digest>`` and ``/v2/<name>/blobs/<digest>`` are plain files
(hard links to the blobs copied out of the mirror's storage, so the bytes are the mirror's), served with the
media type and ``Docker-Content-Digest`` a registry would send. skopeo pulls from it like from any registry.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def blob_path(blobs: Path, digest: str) -> Path:
    """Where distribution's filesystem driver keeps a blob (blobs = .../v2/blobs/sha256)."""
    hexdigest = digest.split(":", 1)[1]
    return blobs / hexdigest[:2] / hexdigest / "data"


def link(src: Path, dest: Path) -> None:
    """Hard link (same disk, no copy), readable by nginx's workers."""
    if not src.is_file():
        raise FileNotFoundError(f"{src}: the mirror has not cached this blob")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.unlink()
    os.link(src, dest)
    dest.chmod(0o644)


def build(blobs: Path, root: Path, images: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """Lay out ROOT/v2/... for IMAGES ({name: bench image record}); return the manifest locations for nginx."""
    locations = []
    for name, image in images.items():
        repo = root / "v2" / "library" / name
        manifest_type = json.loads(blob_path(blobs, image["manifest"]).read_bytes()).get("mediaType", OCI_MANIFEST)
        for ref, digest, media_type in (("latest", image["index"], image["index_type"]),
                                        (image["index"], image["index"], image["index_type"]),
                                        (image["manifest"], image["manifest"], manifest_type)):
            link(blob_path(blobs, digest), repo / "manifests" / ref)
            locations.append({"uri": f"/v2/library/{name}/manifests/{ref}", "type": media_type, "digest": digest})
        for digest in (image["config"], *image["layers"]):
            link(blob_path(blobs, digest), repo / "blobs" / digest)
    for directory in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    return locations


NGINX_CONF = """# nginx as a static, read-only registry (bench/static_registry.py): the local limit for the mirror.
worker_processes auto;
pid /tmp/nginx.pid;
error_log stderr warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    client_body_temp_path /tmp/nginx-body;
    proxy_temp_path /tmp/nginx-proxy;
    fastcgi_temp_path /tmp/nginx-fastcgi;
    uwsgi_temp_path /tmp/nginx-uwsgi;
    scgi_temp_path /tmp/nginx-scgi;
    server {{
        listen 443 ssl http2;
        ssl_certificate /tls/server.crt;
        ssl_certificate_key /tls/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root /srv;
        default_type application/octet-stream;
        add_header Docker-Distribution-API-Version registry/2.0 always;
        location = /v2/ {{
            default_type application/json;
            return 200 '{{}}';
        }}
{locations}    }}
}}
"""

LOCATION = """        location = {uri} {{
            default_type {type};
            add_header Docker-Content-Digest {digest} always;
            add_header Docker-Distribution-API-Version registry/2.0 always;
        }}
"""


def nginx_conf(locations: list[dict[str, str]]) -> str:
    """nginx.conf for the layout: TLS on :443 (HTTP/2 like Go's server), exact locations for the manifests."""
    return NGINX_CONF.format(locations="".join(LOCATION.format(**loc) for loc in locations))
