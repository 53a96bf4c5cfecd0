"""Fetches Debian packages with apt, in a private apt configuration.

Nothing of the host's apt state is touched: the source list, the package
lists, the download cache and the dpkg status file all live under the
guest-kit cache.  The mirror is whatever the host's apt sources already
name (read at run time, never written into the repository); only the
suite changes, so a suite the host does not list (trixie) works too.

Signatures are verified for real: the private source list says
`signed-by=` the host's Debian archive keyring.  bookworm's
debian-archive-keyring 2023.3+deb12u2 and later holds the trixie keys; an
older one makes `apt-get update` fail with NO_PUBKEY, and the error tells
how to get a newer keyring (make deps installs it).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
MIRROR_ENV = "BHIVE_DEBIAN_MIRROR"     # overrides the host's sources


class FetchError(RuntimeError):
    pass


@dataclass(frozen=True)
class Mirror:
    uri: str
    keyring: str


def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, cur, key = [], {}, None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                stanzas.append(cur)
            cur, key = {}, None
            continue
        if line[0] in " \t" and key:
            cur[key] += " " + line.strip()
            continue
        if ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            cur[key] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def host_mirrors(etc: str = "/etc/apt") -> list[Mirror]:
    """The Debian archive mirrors the host's apt sources name, in order
    (deb822 `*.sources` first, then one-line `sources.list` files).
    Security and updates-only entries are left out: they don't carry the
    plain suites."""
    found: list[Mirror] = []

    def add(uri: str, suites: list[str], keyring: str | None) -> None:
        if not suites or all(re.search(r"-(security|updates|backports)$|/updates$", s) for s in suites):
            return
        if not uri.startswith(("http://", "https://", "file:/")):
            return
        m = Mirror(uri.rstrip("/"), keyring or DEFAULT_KEYRING)
        if m not in found:
            found.append(m)

    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for st in _deb822_stanzas(text):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes").lower() == "no":
                continue
            keyring = st.get("signed-by")
            if keyring and not keyring.startswith("/"):
                keyring = None          # an inline key block: use the default
            for uri in st.get("uris", "").split():
                add(uri, st.get("suites", "").split(), keyring)
    lists = [os.path.join(etc, "sources.list")] + sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))
    for path in lists:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line.startswith("deb "):
                continue
            opts = {}
            m = re.match(r"deb\s+\[([^\]]*)\]\s+(.*)", line)
            rest = line[4:].strip()
            if m:
                for o in m.group(1).split():
                    k, _, v = o.partition("=")
                    opts[k] = v
                rest = m.group(2)
            parts = rest.split()
            if len(parts) >= 2:
                add(parts[0], [parts[1]], opts.get("signed-by"))
    return found


def mirror() -> Mirror:
    """The mirror to use: $BHIVE_DEBIAN_MIRROR, else the host's first."""
    env = os.environ.get(MIRROR_ENV)
    if env:
        return Mirror(env.rstrip("/"), DEFAULT_KEYRING)
    ms = host_mirrors()
    if not ms:
        raise FetchError("no Debian mirror in the host's apt sources (/etc/apt); "
                         f"set ${MIRROR_ENV} to a Debian archive URL")
    return ms[0]


def mirror_reachable(timeout: float = 5.0) -> tuple[bool, str]:
    """Whether a TCP connection to the mirror opens; (ok, reason)."""
    try:
        m = mirror()
    except FetchError as exc:
        return False, str(exc)
    u = urlparse(m.uri)
    if u.scheme == "file":
        return os.path.isdir(u.path), f"local mirror {u.path}"
    port = u.port or (443 if u.scheme == "https" else 80)
    proxy = os.environ.get("http_proxy") or os.environ.get("HTTP_PROXY")
    host = u.hostname
    if proxy and u.scheme == "http":
        p = urlparse(proxy)
        host, port = p.hostname, p.port or 80
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, "reachable"
    except OSError as exc:
        return False, f"package mirror unreachable: {exc}"


class AptSuite:
    """One suite of the mirror, with its own private apt state."""

    def __init__(self, root: Path, suite: str, components: str = "main"):
        self.root = Path(root) / "apt" / suite
        self.suite = suite
        self.components = components
        self.mirror = mirror()

    # -- private apt configuration -----------------------------------------
    def _options(self) -> list[str]:
        r = self.root
        return [
            "-o", f"Dir::Etc::sourcelist={r / 'sources.list'}",
            "-o", "Dir::Etc::sourceparts=-",
            "-o", f"Dir::Etc::preferencesparts={r / 'preferences.d'}",
            "-o", f"Dir::Etc::preferences={r / 'preferences'}",
            "-o", f"Dir::State::Lists={r / 'lists'}",
            "-o", f"Dir::State::status={r / 'status'}",
            "-o", f"Dir::State::extended_states={r / 'extended_states'}",
            "-o", f"Dir::Cache={r / 'cache'}",
            "-o", "APT::Architecture=amd64",
            "-o", "APT::Architectures=amd64",
            "-o", "Acquire::Languages=none",
            "-o", "APT::Get::List-Cleanup=false",
            "-o", "Debug::NoLocking=true",
        ] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])

    def _prepare(self) -> None:
        r = self.root
        for d in ("lists/partial", "cache/archives/partial", "preferences.d", "debs"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "status").touch()
        line = f"deb [signed-by={self.mirror.keyring}] {self.mirror.uri} {self.suite} {self.components}\n"
        src = r / "sources.list"
        if not src.exists() or src.read_text() != line:
            src.write_text(line)
            for f in (r / "lists").glob("*_Packages*"):
                f.unlink()

    def _run(self, tool: str, *args: str, cwd: Path | None = None, progress: bool = False) -> str:
        """`progress`: on a terminal, apt's own progress (what it fetches,
        how far) is shown on stderr instead of being captured."""
        show = progress and sys.stderr.isatty()
        cmd = [tool] + ([] if show else ["-q"]) + self._options() + list(args)
        if show:
            p = subprocess.run(cmd, cwd=cwd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
        else:
            p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        if p.returncode != 0:
            err = (p.stderr or p.stdout).strip()
            hint = ""
            if "NO_PUBKEY" in err or "not signed" in err:
                hint = ("\nthe host's debian-archive-keyring lacks this suite's key: install a newer "
                        "debian-archive-keyring (bookworm >= 2023.3+deb12u2, or from bookworm-backports); "
                        "make deps installs it")
            raise FetchError(f"{' '.join([tool] + list(args))} failed:\n{err}{hint}")
        return p.stdout

    def update(self, force: bool = False) -> None:
        self._prepare()
        have = list((self.root / "lists").glob("*_Packages*"))
        if have and not force:
            return
        note(f"reading the package index of Debian {self.suite}")
        self._run("apt-get", "update", progress=True)

    def show(self, package: str) -> dict[str, str]:
        """The candidate version's control fields."""
        self.update()
        out = self._run("apt-cache", "show", "--no-all-versions", package)
        st = _deb822_stanzas(out)
        if not st:
            raise FetchError(f"{package}: not in {self.suite}")
        return st[0]

    def resolve_kernel(self, meta: str) -> str:
        """The real linux-image-<version> package a metapackage depends on."""
        deps = self.show(meta).get("depends", "")
        for alt in deps.split(","):
            name = alt.split("|")[0].strip().split()[0]
            if re.match(r"linux-image-\d", name):
                return name
        raise FetchError(f"{meta} in {self.suite} depends on no linux-image-<version>: {deps!r}")

    def download(self, package: str) -> Path:
        """The .deb of the candidate version, downloaded into the cache."""
        fields = self.show(package)
        version = fields["version"]
        debs = self.root / "debs"
        pattern = f"{package}_{version.replace(':', '%3a')}_*.deb"
        hits = sorted(debs.glob(pattern))
        if hits:
            return hits[0]
        size = int(fields.get("size", 0))
        note(f"downloading {package} {version} ({size / (1 << 20):.1f} MiB) from Debian {self.suite}; "
             f"cached for next time")
        self._run("apt-get", "download", f"{package}={version}", cwd=debs, progress=True)
        hits = sorted(debs.glob(pattern))
        if not hits:
            raise FetchError(f"apt-get download {package} left no {pattern} in {debs}")
        return hits[0]


def note(text: str) -> None:
    """What the guest kit is fetching, on stderr: a first `make run` downloads
    tens of MiB and should not look hung."""
    print(f"bhive: guestkit: {text}", file=sys.stderr, flush=True)


def extract_members(deb: Path, wanted, dest: Path) -> list[Path]:
    """Extract the files of `deb` whose path (without the leading './')
    satisfies `wanted(path)` into `dest`, flat (basename only).  Streams
    `dpkg-deb --fsys-tarfile`, so a kernel's 400 MB of modules is read
    but never written."""
    if shutil.which("dpkg-deb") is None:
        raise FetchError("dpkg-deb is not installed")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    out: list[Path] = []
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./").lstrip("/")
                if not member.isfile() or not wanted(name):
                    continue
                f = tar.extractfile(member)
                target = dest / os.path.basename(name)
                tmp = target.with_suffix(target.suffix + ".part")
                with open(tmp, "wb") as fh:
                    shutil.copyfileobj(f, fh)
                os.chmod(tmp, member.mode & 0o777)
                os.replace(tmp, target)
                out.append(target)
    finally:
        proc.stdout.close()
        rc = proc.wait()
    if rc != 0:
        raise FetchError(f"dpkg-deb --fsys-tarfile {deb} exited {rc}")
    return out
