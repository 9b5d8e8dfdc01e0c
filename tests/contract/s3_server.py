"""A real local S3 API for the ``s3`` destination's tests: moto's server as a subprocess.

``MotoS3(auth=True)`` makes moto check credentials the way S3 does: the first
few requests (``INITIAL_NO_AUTH_ACTION_COUNT``) create an IAM user with an
allow-all policy and its access key; every request after that must be signed
with a key moto issued (unknown key id: ``InvalidAccessKeyId``; wrong secret:
``SignatureDoesNotMatch``), and IAM policies are enforced (``AccessDenied``).
Readiness is polled with a deadline; the process is killed by its PID.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from tests.harness import free_port

REGION = "us-east-1"
ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
# create_user, create_access_key, put_user_policy: the requests moto takes unsigned.
_SETUP_ACTIONS = 3


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str


class MotoS3:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self, log: Path, *, auth: bool = True, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth = auth
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.keys = Keys("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")

    def start(self, timeout: float = 30.0) -> MotoS3:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not answer in {timeout}s: {self.log()}") from None
                time.sleep(0.05)  # polling readiness: the signal itself
        if self.auth:
            iam = self.client("iam")
            iam.create_user(UserName="eventd")
            key = iam.create_access_key(UserName="eventd")["AccessKey"]
            iam.put_user_policy(UserName="eventd", PolicyName="all", PolicyDocument=ALLOW_ALL)
            self.keys = Keys(key["AccessKeyId"], key["SecretAccessKey"])
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        """Stop answering (SIGSTOP): connections are accepted by the kernel, never answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    # -- boto3 on the side: what a data team would read ------------------------------

    def client(self, service: str = "s3", keys: Keys | None = None) -> Any:
        k = keys or self.keys
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=k.access_key_id,
            aws_secret_access_key=k.secret_access_key,
        )

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def user_without_policy(self, name: str) -> Keys:
        """Keys of a user who may do nothing (moto answers AccessDenied)."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def objects(self, bucket: str) -> dict[str, bytes]:
        """key -> object bytes (gunzipped when the key ends in .gz), every object."""
        s3 = self.client()
        out: dict[str, bytes] = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                out[item["Key"]] = gzip.decompress(body) if item["Key"].endswith(".gz") else body
        return out
