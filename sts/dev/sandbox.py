"""``sts dev``: a local sandbox that stays up, as ``vault server -dev`` does, and ``sts dev token``.

``sts dev`` starts what ``sts demo`` starts (a Zuplo-like issuer, the AWS, GCP and Azure (Entra)
emulators, ``sts serve`` in broker mode on a throw-away SQLite database with the demo's
mappings), prints the URLs, the database's URL and the commands to paste into another shell (a
``curl`` exchange, ``sts explain --token``, ``sts revoke``), and stays up until Ctrl-C (or
SIGTERM). It
writes the issuer's signing key and URLs to a new state file readable only by the user
(:func:`state_path`; never into a file or through a symlink that was there), which ``sts dev
token`` reads to mint a token the running sandbox accepts; the file is removed when the sandbox
stops. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import stat
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sts.dev.issuer import SigningKey, compact_rs256, dev_claims
from sts.protocol import ID_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE

if TYPE_CHECKING:
    from sts.dev.demo import World

DEV_AUDIENCE = "https://sts.dev.localhost"
DEFAULT_PORT = 8000
STATE_VARIABLE = "ZUPLO_STS_DEV_STATE"


def state_path() -> Path:
    """Where the running sandbox describes itself: ``$ZUPLO_STS_DEV_STATE``, else a file in the
    user's runtime directory (or the temporary directory), one per user."""
    configured = os.environ.get(STATE_VARIABLE)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"zuplo-sts-dev-{os.getuid()}.json"


def _check_state_path(path: Path) -> bool:
    """True if a file is at ``path``: one this user may replace (a regular file of this user's,
    not a symlink, as a sandbox that died leaves it); ClickException for anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(info.st_mode):
        problem = "a symlink"
    elif not stat.S_ISREG(info.st_mode):
        problem = "not a regular file"
    elif info.st_uid != os.geteuid():
        problem = f"owned by another user (uid {info.st_uid})"
    else:
        return True
    raise click.ClickException(
        f"refusing to write the sandbox state to {path}: it is {problem}; remove it or set "
        f"{STATE_VARIABLE} to another path"
    )


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """A new file readable by this user only (it holds a private key): never one that was there
    (another user's, world-readable, or a symlink; a stale one of this user's is removed first)."""
    if _check_state_path(path):
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as error:  # another one took the name since, or the directory is not ours
        raise click.ClickException(
            f"cannot create the sandbox state file {path}: {error.strerror}"
        ) from None
    with os.fdopen(descriptor, "w") as handle:
        try:
            os.fchmod(descriptor, 0o600)  # whatever the umask took away: the owner must write
            info = os.fstat(descriptor)
            if not (
                stat.S_ISREG(info.st_mode)
                and stat.S_IMODE(info.st_mode) == 0o600
                and info.st_uid == os.geteuid()
                and info.st_nlink == 1
            ):
                raise click.ClickException(
                    f"refusing to write the sandbox state to {path}: once created it is not a "
                    f"0600 file of this user's (mode {stat.S_IMODE(info.st_mode):o}, "
                    f"uid {info.st_uid})"
                )
            json.dump(state, handle)
            handle.flush()
        except BaseException:
            path.unlink(missing_ok=True)  # ours: O_EXCL made it
            raise


def _read_state(path: Path) -> dict[str, Any] | None:
    """The running sandbox's state; None if there is none, it died without cleaning up, or the
    file is not one this user's sandbox wrote (a symlink, another user's)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        with os.fdopen(descriptor) as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
                return None
            state = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return None  # a sandbox that died without cleaning up
    return state


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def curl_command(url: str, mapping: str) -> str:
    return (
        f"curl -s {url}/token \\\n"
        f"  -d grant_type={TOKEN_EXCHANGE_GRANT_TYPE} \\\n"
        f"  -d subject_token_type={ID_TOKEN_TYPE} \\\n"
        f"  -d audience={mapping} \\\n"
        '  --data-urlencode "subject_token=$(sts dev token)"'
    )


def explain_command(world: World, mapping: str) -> str:
    """``sts explain --token`` for a ``sts dev token``, with the variables it reads set to the
    sandbox's (absolute database URL, the issuer whose keys verify the token, the audience):
    it works as printed from any shell and directory while the sandbox runs."""
    variables = {
        "STS_DATABASE_URL": world.database_url,
        "STS_TRUSTED_ISSUERS": world.issuer.url,
        "STS_AUDIENCE": DEV_AUDIENCE,
        "STS_ALLOW_HTTP_LOOPBACK": "true",
    }
    lines = [f"{name}={shlex.quote(value)}" for name, value in variables.items()]
    lines.append(f'sts explain --token "$(sts dev token)" --audience {shlex.quote(mapping)}')
    return " \\\n  ".join(lines)


def run_sandbox(port: int) -> int:
    """Start the sandbox and serve until interrupted; 0 on a clean stop."""
    try:
        from sts.dev.aws_emulator import AwsEmulator
    except ImportError:
        click.echo("error: sts dev needs the AWS emulator: pip install 'zuplo-sts[demo]'", err=True)
        return 1
    from sts.dev.demo import start_world
    from sts.dev.serving import sts_serve_process
    from sts.serve import port_taken

    taken = port_taken("127.0.0.1", port)
    if taken is not None:
        click.echo(f"error: cannot listen on 127.0.0.1:{port}: {taken}", err=True)
        return 1
    path = state_path()
    running = _read_state(path)
    if running is not None:
        click.echo(
            f"error: a sandbox is already running (pid {running['pid']}, {running['url']})",
            err=True,
        )
        return 1
    _check_state_path(path)  # refused now, not after everything has started
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sts-dev-")))
            url = f"http://127.0.0.1:{port}"
            world = start_world(stack, AwsEmulator, broker_issuer=url, audience=DEV_AUDIENCE,
                                workdir=workdir)  # fmt: skip
            log = workdir / "serve.log"
            served = stack.enter_context(sts_serve_process(world.env, port, log))
            key = world.issuer.key
            _write_state(
                path,
                {
                    "pid": os.getpid(),
                    "url": served,
                    "issuer": world.issuer.url,
                    "audience": DEV_AUDIENCE,
                    "kid": key.kid,
                    "private_key_pem": key.private_key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,
                        serialization.NoEncryption(),
                    ).decode(),
                },
            )
            stack.callback(path.unlink, missing_ok=True)
            _print_banner(served, world, log)
            while not stopping.wait(0.5):
                if not _alive_server(served):
                    click.echo("error: sts serve stopped; see " + str(log), err=True)
                    return 1
            click.echo("\nstopping the sandbox")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def _alive_server(url: str) -> bool:
    import requests

    try:
        return requests.get(url + "/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _print_banner(url: str, world: World, log: Path) -> None:
    echo = click.echo
    echo(
        click.style("zuplo-sts dev sandbox", bold=True)
        + " — everything on 127.0.0.1, Ctrl-C stops it\n"
    )
    echo(f"  zuplo-sts (broker mode)   {url}        log: {log}")
    echo(f"  Zuplo-like issuer         {world.issuer.url}")
    echo(f"  AWS STS emulator          {world.aws.endpoint_url}")
    echo(f"  GCP STS + IAM emulator    {world.gcp.iam_url}")
    echo(f"  Azure (Entra) emulator    {world.entra.authority_url}")
    echo(f"  audience (STS_AUDIENCE)   {DEV_AUDIENCE}")
    echo("\nMappings: " + ", ".join(world.mapping_names))
    echo("\nExchange a token (paste into another terminal):\n")
    echo(curl_command(url, world.mapping_names[0]))
    echo(
        "\nOther mappings: audience="
        + " or audience=".join(world.mapping_names[1:])
        + ". Another identity: sts dev token --deployment other-deployment (see --help)."
    )
    from sts.dev.demo import CLOUD_RUN_URL

    echo("\nA Google-signed ID token for a Cloud Run URL (analytics-gcp's id_token_audiences):\n")
    echo(
        curl_command(url, "analytics-gcp")
        + f" \\\n  -d requested_token_type={ID_TOKEN_TYPE} -d resource={CLOUD_RUN_URL}"
    )
    database = f"STS_DATABASE_URL={shlex.quote(world.database_url)}"
    echo(f"\nThe sandbox's database: {database}")
    echo("Which mapping a token gets, and why the others do not (sts explain):\n")
    echo(explain_command(world, world.mapping_names[0]))
    echo("\nCut one deployment off (refused within 5 s, its neighbours still served), then undo:\n")
    echo(
        f"  {database} sts revoke add --account my-account "
        "--deployment copper-bedbug-main-53c4947 --reason 'trying it out'"
    )
    echo(f"  {database} sts revoke lift 1")
    echo("\n(sts dev token --deployment other-deployment is the neighbour still served.)")
    sys.stdout.flush()


def mint_dev_token(  # noqa: PLR0917 - the identity's claims
    account: str,
    project: str,
    deployment: str,
    environment_type: str,
    audience: str | None,
    lifetime: int,
) -> str:
    """A token from the running sandbox's issuer; ClickException when none is running."""
    state = _read_state(state_path())
    if state is None:
        raise click.ClickException("no sts dev sandbox is running (start one with: sts dev)")
    private = serialization.load_pem_private_key(state["private_key_pem"].encode(), None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise click.ClickException("the sandbox state file holds no RSA key")
    claims = dev_claims(
        state["issuer"],
        audience or state["audience"],
        lifetime=lifetime,
        account=account,
        project=project,
        deployment=deployment,
        environment_type=environment_type,
    )
    return compact_rs256(SigningKey(state["kid"], private), claims)
