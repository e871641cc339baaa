"""``hack/images build NAME|all``: container images with buildah, cached by content, imported into the node.

- ``base``: Debian (``DEBIAN_SUITE``) made with debootstrap from the machine's own apt mirror, committed
  from scratch. Other images take it as the build argument ``BASE``, so the same build file works with a
  public base (``--build-arg BASE=docker.io/library/python:3.11-slim-bookworm``) where a registry is.
- ``pause``: the Kubernetes sandbox image, built from the kubernetes module's ``build/pause/linux/pause.c``.
- every other ``images/NAME/Containerfile``: built with the repository as context. An image whose folder has
  a ``parent`` file is built over that image (its build argument ``PARENT``; the parent is built first and
  its content hash is part of this one's), and one with an ``opt-in`` file is built only when named
  (``build all`` skips it: the vLLM image is a large layer that only its tier needs).

Nothing host-specific is written into the repository: the mirror, pip configuration and CA bundle are read
from the machine at build time and mounted into build steps read-only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localcluster.config import PAUSE_IMAGE, REPO, Paths, cache_dir, read_versions
from localcluster.procs import ClusterError, read_pid, run, tail

IMAGES = REPO / "images"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Only files matching these are hashed for an image whose context is the repository.
CONTEXT_IGNORE = re.compile(
    r"(^|/)(\.git|\.venv|__pycache__|\.mypy_cache|\.ruff_cache|\.pytest_cache|"
    r"\.hypothesis|node_modules)(/|$)"
)


def log(msg: str) -> None:
    print(f"images: {msg}", file=sys.stderr, flush=True)


def ref_of(name: str) -> str:
    return PAUSE_IMAGE if name == "pause" else f"localhost/triptych/{name}:dev"


def record_path(name: str) -> Path:
    return cache_dir() / "images" / f"{name}.json"


def load_record(name: str) -> dict[str, str]:
    try:
        data: dict[str, str] = json.loads(record_path(name).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return data


def save_record(name: str, record: dict[str, str]) -> None:
    record_path(name).parent.mkdir(parents=True, exist_ok=True)
    record_path(name).write_text(json.dumps(record, indent=2))


def buildah_has(ref: str) -> bool:
    return (
        run(["buildah", "inspect", "--type", "image", ref], what="buildah inspect", check=False).returncode
        == 0
    )


def apt_mirror(suite: str) -> str:
    """The Debian mirror this machine's apt uses for ``suite`` (deb822 .sources or one-line .list)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
                if suite in fields.get("Suites", "").split() and "security" not in fields.get("URIs", ""):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                    return parts[1] if not parts[1].startswith("[") else parts[2]
    raise ClusterError(f"images: no apt source for Debian {suite} on this machine")


def tree_hash(paths: list[Path], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for root in paths:
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for f in files:
            rel = f.relative_to(REPO) if f.is_relative_to(REPO) else f
            if CONTEXT_IGNORE.search(str(rel)):
                continue
            h.update(str(rel).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def context_inputs(name: str) -> list[Path]:
    """What an image's content depends on: its folder plus the repository paths listed in its ``inputs``."""
    folder = IMAGES / name
    inputs = [folder]
    listing = folder / "inputs"
    if listing.exists():
        for raw in listing.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line:
                inputs.append(REPO / line)
    return inputs


def build_base(force: bool) -> str:
    versions = read_versions()
    suite = versions["DEBIAN_SUITE"]
    folder = IMAGES / "base"
    key = tree_hash([folder], extra=suite)
    ref = ref_of("base")
    record = load_record("base")
    if not force and record.get("hash") == key and buildah_has(ref):
        log(f"base: unchanged ({key}), cached")
        return key
    packages = [
        word
        for line in (folder / "packages").read_text().splitlines()
        for word in line.split("#", 1)[0].split()
    ]
    start = time.monotonic()
    mirror = apt_mirror(suite)
    with tempfile.TemporaryDirectory(prefix="triptych-base-", dir=cache_dir()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        logf = cache_dir() / "images" / "base-debootstrap.log"
        logf.parent.mkdir(parents=True, exist_ok=True)
        logf.write_text("")
        run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, rootfs, mirror],
            what="images: debootstrap base",
            timeout=1200,
            log=logf,
        )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (rootfs / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        ctr = run(["buildah", "from", "scratch"], what="buildah from scratch").stdout.strip()
        try:
            mnt = run(["buildah", "mount", ctr], what="buildah mount").stdout.strip()
            run(["cp", "-a", f"{rootfs}/.", mnt], what="images: copy base rootfs")
            run(["buildah", "umount", ctr], what="buildah umount")
            run(
                [
                    "buildah",
                    "config",
                    "--env",
                    "LANG=C.UTF-8",
                    "--env",
                    "PYTHONDONTWRITEBYTECODE=1",
                    "--cmd",
                    "/bin/bash",
                    "--label",
                    f"triptych.content-hash={key}",
                    ctr,
                ],
                what="buildah config",
            )
            run(["buildah", "commit", "--rm", ctr, ref], what="buildah commit base", timeout=600)
        except ClusterError:
            run(["buildah", "rm", ctr], what="buildah rm", check=False)
            raise
    save_record("base", {"hash": key, "ref": ref})
    log(f"base: built in {time.monotonic() - start:.1f} s from debootstrap ({ref})")
    return key


def pause_source() -> Path:
    version = read_versions()["K8S_VERSION"]
    gomodcache = run(["go", "env", "GOMODCACHE"], what="go env").stdout.strip()
    src = Path(gomodcache) / f"k8s.io/kubernetes@{version}" / "build/pause/linux/pause.c"
    if not src.exists():
        run(
            ["go", "mod", "download", f"k8s.io/kubernetes@{version}"],
            what="go mod download kubernetes",
            timeout=900,
        )
    return src


def parent_of(name: str) -> str | None:
    marker = IMAGES / name / "parent"
    return marker.read_text().strip() if marker.exists() else None


def opt_in(name: str) -> bool:
    return (IMAGES / name / "opt-in").exists()


def build_image(name: str, force: bool, base_key: str) -> str:
    folder = IMAGES / name
    if not (folder / "Containerfile").exists():
        raise ClusterError(f"images: {folder}/Containerfile not found")
    ref = ref_of(name)
    parent = parent_of(name)
    if name == "pause":
        src = pause_source()
        key = tree_hash([folder, src])
    elif parent is not None:
        key = tree_hash(context_inputs(name), extra=build_image(parent, force=False, base_key=base_key))
    else:
        key = tree_hash(context_inputs(name), extra=base_key)
    record = load_record(name)
    if not force and record.get("hash") == key and buildah_has(ref):
        log(f"{name}: unchanged ({key}), cached")
        return key
    start = time.monotonic()
    logf = cache_dir() / "images" / f"{name}-build.log"
    logf.parent.mkdir(parents=True, exist_ok=True)
    logf.write_text("")
    cmd: list[str | Path] = [
        "buildah",
        "bud",
        "--isolation",
        "chroot",
        "--network",
        "host",
        "--layers",
        "--label",
        f"triptych.content-hash={key}",
        "-t",
        ref,
        "-f",
        folder / "Containerfile",
    ]
    if name == "pause":
        with tempfile.TemporaryDirectory(prefix="triptych-pause-") as tmp:
            run(
                ["gcc", "-Os", "-Wall", "-static", "-DVERSION=triptych", "-o", Path(tmp) / "pause", src],
                what="images: compile pause.c",
                log=logf,
            )
            run(["strip", Path(tmp) / "pause"], what="strip pause", check=False)
            shutil.copy(folder / "Containerfile", Path(tmp) / "Containerfile")
            run([*cmd, tmp], what=f"images: build {name}", timeout=600, log=logf)
    else:
        cmd += ["--build-arg", f"BASE={ref_of('base')}"]
        if parent is not None:
            cmd += ["--build-arg", f"PARENT={ref_of(parent)}"]
        # Downloads inside build steps use this machine's own CA bundle and pip configuration, read-only.
        if CA_BUNDLE.exists():
            cmd += ["-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro"]
        if Path("/etc/pip.conf").exists():
            cmd += ["-v", "/etc/pip.conf:/etc/pip.conf:ro"]
        for var in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
            if os.environ.get(var):
                cmd += ["--build-arg", f"{var}={os.environ[var]}"]
        run([*cmd, REPO], what=f"images: build {name}", timeout=3600, log=logf)
    old_id = record.get("image_id")
    image_id = run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", ref], what="buildah inspect"
    ).stdout.strip()
    if old_id and old_id != image_id:
        # Keep one copy per store: the image this one replaces goes.
        run(["buildah", "rmi", old_id], what="buildah rmi (replaced image)", check=False)
    save_record(name, {"hash": key, "ref": ref, "image_id": image_id})
    log(f"{name}: built in {time.monotonic() - start:.1f} s ({ref})")
    return key


def containerd_ready(paths: Paths) -> bool:
    return paths.containerd_socket.exists() and read_pid(paths.pidfile("containerd")) is not None


def ctr(paths: Paths, *args: str | Path, check: bool = True, timeout: float = 1800) -> str:
    return run(
        ["ctr", "--address", paths.containerd_socket, "--namespace", "k8s.io", *args],
        what="ctr",
        check=check,
        timeout=timeout,
    ).stdout


def import_image(paths: Paths, name: str) -> None:
    """Copy the built image into the node's containerd under its fully qualified name, unless it is there."""
    record = load_record(name)
    ref = ref_of(name)
    if not record:
        raise ClusterError(f"images: {name} is not built (hack/images build {name})")
    listing = ctr(paths, "images", "list", f"name=={ref}", check=False)
    if record.get("imported_hash") == record["hash"] and ref in listing:
        return
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="triptych-import-", dir=cache_dir()) as tmp:
        archive = Path(tmp) / "image.tar"
        # Uncompressed: gzip of the worker image's ~5 GB was most of the import time, and the archive is
        # deleted as soon as containerd has it.
        run(
            ["buildah", "push", "--quiet", "--disable-compression", ref, f"oci-archive:{archive}:{ref}"],
            what=f"images: export {name}",
            timeout=1800,
        )
        require_free_space(paths, name, needed=2 * archive.stat().st_size)
        for attempt in (1, 2, 3):
            try:
                ctr(paths, "images", "import", "--no-unpack=false", archive)
                break
            except ClusterError as exc:
                # Seen once in a CI run: re-pointing the tag at the new image lets containerd's garbage
                # collector remove the old image's snapshots while the unpack is still stacking the new
                # one's layers on them ("parent snapshot ... does not exist"). A second import finds the
                # content in place and unpacks again; anything else is a real failure.
                if attempt == 3 or "snapshot" not in str(exc) or "does not exist" not in str(exc):
                    raise
                log(f"{name}: containerd lost a parent snapshot during the import (attempt {attempt}); again")
                time.sleep(2)
    record["imported_hash"] = record["hash"]
    save_record(name, record)
    log(f"{name}: imported into the node's containerd in {time.monotonic() - start:.1f} s ({ref})")


# Room left over after an import: the kubelet never evicts on disk (see configs.kubelet_config), so a full
# disk shows up as pods failing to write; better to refuse the import with a message that says why.
FREE_SPACE_MARGIN = 2 * 1024**3


def require_free_space(paths: Paths, name: str, *, needed: int) -> None:
    """containerd stores an imported image twice (its content blobs and the unpacked snapshot)."""
    free = shutil.disk_usage(paths.containerd_root).free
    if free < needed + FREE_SPACE_MARGIN:
        gib = 1024**3
        raise ClusterError(
            f"images: importing {name} needs {(needed + FREE_SPACE_MARGIN) / gib:.1f} GiB free under "
            f"{paths.containerd_root}, only {free / gib:.1f} GiB is; free some space (old buildah images: "
            "'buildah images', 'buildah rmi --prune') and run again"
        )


def import_built_images(paths: Paths, required: tuple[str, ...] = ()) -> None:
    """Called by ``cluster up``: build what is required and import every built image."""
    base_key = load_record("base").get("hash", "")
    for name in required:
        build_image(name, force=False, base_key=base_key)
    for name in all_names():
        if name != "base" and load_record(name):
            import_image(paths, name)


def all_names() -> list[str]:
    return sorted(p.name for p in IMAGES.iterdir() if p.is_dir())


def build(names: list[str], force: bool) -> None:
    paths = Paths(cache_dir())
    wanted = [n for n in all_names() if not opt_in(n)] if names == ["all"] else names
    for name in wanted:
        if not (IMAGES / name).is_dir():
            raise ClusterError(f"images: no folder images/{name} (have: {', '.join(all_names())})")
    needs_base = any(n not in ("base", "pause") for n in wanted)
    base_key = build_base(force and "base" in wanted) if (needs_base or "base" in wanted) else ""
    for name in wanted:
        if name == "base":
            continue
        build_image(name, force, base_key)
        if containerd_ready(paths):
            import_image(paths, name)
        else:
            log(f"{name}: the node is down; imported at the next 'hack/cluster up'")
    if containerd_ready(paths) and "pause" not in wanted:
        # Every pod needs the sandbox image; a cheap check (nothing is copied when it is there) that makes
        # `hack/images build X` also repair a node whose pause image was lost.
        import_image(paths, "pause")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hack/images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build images (cached by content) and import them into the node")
    b.add_argument("names", nargs="+", help="image folder names under images/, or 'all'")
    b.add_argument("--force", action="store_true", help="rebuild even when the content is unchanged")
    r = sub.add_parser("ref", help="print an image's fully qualified reference")
    r.add_argument("name")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            build(args.names, args.force)
        else:
            print(ref_of(args.name))
    except ClusterError as exc:
        print(f"images failed: {exc}", file=sys.stderr)
        if exc.log is not None:
            print(f"--- last lines of {exc.log} ---\n{tail(exc.log)}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"images failed: timed out: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"images failed: {exc}", file=sys.stderr)
        return 1
    return 0
