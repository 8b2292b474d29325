"""An S3 server for tests and benches: moto's standalone server (``moto[server]``) on a free
loopback port, in its own process, spoken to over HTTP by boto3 like any S3 endpoint.

The pytest fixture over it (``s3server``) is in ``tests/conftest.py``; ``new_bucket``
gives each test its own bucket (with Object Lock, or without) and the ``[objects]``
settings that reach it.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.broker import free_port

ACCESS_KEY = "testing-key-id"          # moto accepts any credentials
SECRET = "testing-secret"
REGION = "us-east-1"


class MotoServer:
    def __init__(self, d: Path):
        self.dir, self.port, self.proc = d, free_port(), None
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.secret_file = d / "s3.secret"
        self.secret_file.write_text(SECRET + "\n")
        os.chmod(self.secret_file, 0o600)
        self._n = itertools.count()

    def start(self) -> None:
        log = open(self.dir / "moto.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT)
        for _ in range(400):
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("moto server exited: " + self.log()) from None
                time.sleep(0.05)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log(self) -> str:
        try:
            return (self.dir / "moto.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)

    def new_bucket(self, *, object_lock: bool = True, versioned: bool = True) -> str:
        """A fresh bucket (Object Lock implies versioning); returns its name."""
        name = f"lt-{os.getpid()}-{next(self._n)}"
        c = self.client()
        if object_lock:
            c.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
        else:
            c.create_bucket(Bucket=name)
            if versioned:
                c.put_bucket_versioning(Bucket=name,
                                        VersioningConfiguration={"Status": "Enabled"})
        return name

    def objects_section(self, bucket: str, prefix: str = "up") -> dict:
        """The upstream config's ``[objects]`` section for ``bucket``."""
        return {"path": f"s3://{bucket}/{prefix}", "s3_endpoint": self.endpoint,
                "s3_region": REGION, "s3_access_key_id": ACCESS_KEY,
                "s3_secret_access_key_file": str(self.secret_file), "s3_addressing": "path"}
