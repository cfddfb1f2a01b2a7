"""The engine service (`braindiffseg serve`, BrainDiffSegService) over real HTTP on loopback: the token on every
request (401 without), loopback by default and no clear text beyond it, bounded bodies (413), malformed requests
(4xx, and the service goes on), a propagation through the service equal to the engine's own, the feature cache kept
between jobs (the volume sent once), two clients (busy / queued), cancel, TLS with a self-signed certificate, and a
private service that dies (a clear message; the next job starts a new one), stops with its parent or on request.

Services are started with the command line's interface and one torch thread (`service_support`)."""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest

from BrainDiffSegLib.errors import CancelledError
from BrainDiffSegLib.options import preset, to_strings
from BrainDiffSegLib.protocol import simulate_annotation
from BrainDiffSegLib.transfer import MEDIA_TYPE, EngineRequest, encode, images_digest
from BrainDiffSegService.engines import _drive
from conftest import LIB_PARENT
from service_support import free_port, request, start_service

QUICK = replace(preset("quick"), device="cpu")
SLOW = replace(preset("default"), device="cpu")  # the bundled backbone and the full ensemble: seconds on one thread


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    s = start_service(tmp_path_factory.mktemp("service"), "--max-request-mb", "16")
    yield s
    s.stop()


def propagation(tumour_case, options=QUICK, seed=0, k=2):
    images, label, _ = tumour_case(seed=seed)
    ann, _ = simulate_annotation(label, k)
    return EngineRequest("propagate", {"options": to_strings(options)}, {"annotation": ann}, volume=images)


def remote(service, token=None):
    from BrainDiffSegService.engines import ServiceEngine

    return ServiceEngine.remote(service.url, service.token if token is None else token, service.cafile)


def wait_for(predicate, timeout=60.0, what="condition"):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------ the HTTP API

def test_health_answers_with_the_token_and_401_without(service):
    status, body = request(service, "GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["service"] == "braindiffseg"
    assert body["device"] == "cpu" and body["threads"] == 1 and body["max_request_mb"] == 16
    for token in (None, "wrong", service.token + "x", ""):
        status, body = request(service, "GET", "/health", token=token if token != "" else None,
                               headers={"Authorization": "Basic " + service.token} if token == "" else None)
        assert status == 401 and "valid token" in body["detail"], (token, status, body)
    for method, path in (("GET", "/jobs/abc"), ("POST", "/jobs"), ("PUT", "/volumes/abc"), ("POST", "/shutdown")):
        assert request(service, method, path, body=b"" if method != "GET" else None, token=None)[0] == 401


def _interrupt(proc: subprocess.Popen) -> str:
    """Ctrl+C (SIGINT) to a service: it stops cleanly (status 0, "engine service stopped"), whenever it comes."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "engine service stopped" in (out or ""), (proc.returncode, out)
    return out


def test_loopback_by_default_and_no_clear_text_beyond(tmp_path):
    """Loopback and a given token not printed; beyond loopback without TLS refused; without a token a random one
    printed once. Each service gets Ctrl+C right after it prints its address, in the middle of its start-up (where
    uvicorn does not yet handle signals): it stops cleanly (`server.stop_on_signals`), then once it answers."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT))
    proc = subprocess.Popen([sys.executable, "-m", "BrainDiffSegCLI", "serve", "--port", str(port), "--token", "t"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"BrainDiffSeg engine service on http://127.0.0.1:{port}"), line
        assert "token" not in line  # a given token is not printed
        _interrupt(proc)  # during its start-up
    finally:
        proc.kill()
        proc.wait(20)
    proc = subprocess.Popen([sys.executable, "-m", "BrainDiffSegCLI", "serve", "--port", str(port), "--token", "t"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        proc.stdout.readline()
        t0 = time.time()
        while True:  # until it answers: Ctrl+C on a service that serves
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                assert time.time() - t0 < 60
                time.sleep(0.2)
        _interrupt(proc)
    finally:
        proc.kill()
        proc.wait(20)
    run = subprocess.run([sys.executable, "-m", "BrainDiffSegCLI", "serve", "--host", "0.0.0.0", "--port",
                          str(port), "--token", "t"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and "would send the token in clear" in run.stderr and "--certfile" in run.stderr
    # no token given: a random one, printed once for the user to copy
    proc = subprocess.Popen([sys.executable, "-m", "BrainDiffSegService", "serve", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={
                                k: v for k, v in env.items() if k != "BRAINDIFFSEG_TOKEN"}, text=True)
    try:
        line = proc.stdout.readline()
        assert "token: " in line and len(line.split("token: ")[1].strip()) >= 24, line
        _interrupt(proc)
    finally:
        proc.kill()
        proc.wait(20)


def test_bad_requests_get_a_4xx_with_one_sentence_and_the_service_goes_on(service):
    ours = {"Content-Type": MEDIA_TYPE}
    cases = [
        ("POST", "/jobs", b"garbage", ours, 400, "not a compressed BrainDiffSeg message"),
        ("POST", "/jobs", encode({"kind": "x"}, {}), {"Content-Type": "application/json"}, 415, MEDIA_TYPE),
        ("POST", "/jobs", encode({"kind": "magic"}, {}), ours, 400, "Unknown job kind"),
        ("POST", "/jobs", encode({"kind": "propagate"}, {}), ours, 400, "needs 'volume'"),
        ("POST", "/jobs", encode({"kind": "propagate", "volume": "abc", "options": {"method": "magic"}}, {}), ours,
         400, "method: 'magic' is unknown"),
        ("POST", "/jobs", encode({"kind": "propagate", "volume": "abc", "options": {}}, {}), ours, 404,
         "is not on the service"),
        ("PUT", "/volumes/0123", encode({}, {"t1": np.ones((4, 4, 2), np.int16)}), ours, 400, "do not match"),
        ("GET", "/jobs/nope", None, {}, 404, "No job"),
        ("GET", "/jobs/nope/result", None, {}, 404, "No job"),
        ("DELETE", "/jobs/nope", None, {}, 404, "No job"),
        ("GET", "/volumes/nope", None, {}, 404, "not on the service"),
        ("POST", "/shutdown", b"", {}, 403, "not started to be stopped"),
    ]
    for method, path, body, headers, status, words in cases:
        got, answer = request(service, method, path, body=body, headers=headers)
        assert got == status and words in answer["detail"], (method, path, got, answer)
        assert answer["detail"].endswith((".", ")")) and "Traceback" not in answer["detail"]
    # a small body declaring more arrays than the service accepts: refused before allocating them
    header = b'{"meta": {"kind": "propagate"}, "arrays": [{"name": "x", "dtype": "<f8", "shape": [1073741824]}]}'
    declared = zlib.compress(b"BDS1" + len(header).to_bytes(4, "little") + header)
    assert len(declared) < 200
    got, answer = request(service, "POST", "/jobs", body=declared, headers=ours)
    assert got == 413 and "declares 8192 MB of arrays or more" in answer["detail"], answer
    # a header length that does not match its JSON
    got, answer = request(service, "POST", "/jobs", body=zlib.compress(b"BDS1" + (50).to_bytes(4, "little") + header),
                          headers=ours)
    assert got == 400, answer
    assert request(service, "GET", "/health")[0] == 200


def test_oversized_bodies_get_413(service):
    # declared too large: refused from the header, before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", int(service.url.rsplit(":", 1)[1]), timeout=30)
    conn.putrequest("PUT", "/volumes/abc")
    conn.putheader("Authorization", f"Bearer {service.token}")
    conn.putheader("Content-Type", MEDIA_TYPE)
    conn.putheader("Content-Length", str(100 << 20))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and b"at most 16 MB" in response.read()
    conn.close()
    # sent in chunks (no length): refused once more than the limit arrived; our client reads the answer
    from BrainDiffSegService.client import ServiceError, request as client_request
    from BrainDiffSegLib.transfer import Encoder

    rng = np.random.default_rng(0)
    # arrays declared larger than the limit: refused from the message's header, before allocating them
    noise = rng.integers(0, 255, 24 << 20, dtype=np.uint8)
    with pytest.raises(ServiceError, match="declares 24 MB of arrays or more; this service accepts at most 16 MB") \
            as info:
        client_request(service.endpoint(), "PUT", "/volumes/abc", body=Encoder({}, {"x": noise}), timeout=60)
    assert info.value.status == 413
    # arrays within the limit but a body over it (incompressible data: zlib adds a little): counted as it arrives
    noise = rng.integers(0, 255, (16 << 20) - 300, dtype=np.uint8)
    with pytest.raises(ServiceError, match="over 16 MB, the most this service accepts") as info:
        client_request(service.endpoint(), "PUT", "/volumes/abc", body=Encoder({}, {"x": noise}), timeout=60)
    assert info.value.status == 413
    assert request(service, "GET", "/health")[0] == 200


# ------------------------------------------------------------------------------------------ jobs

def test_propagation_through_the_service_equals_the_engine_and_reuses_the_volume(service, tumour_case):
    from BrainDiffSegService.engines import InProcessEngine

    engine = remote(service)
    stages = []
    first = engine.run(propagation(tumour_case), progress=lambda s, f: stages.append((s, f)))
    local = InProcessEngine().run(propagation(tumour_case))
    for name in ("labels", "entropy", "disagreement"):
        np.testing.assert_array_equal(first.arrays[name], local.arrays[name])
    assert first.meta["annotated_slices"] == local.meta["annotated_slices"]
    seen = [s for s, _ in stages]
    assert {"sending the volume", "training classifier", "receiving the result"} <= set(seen), seen
    assert all(b >= a for (_, a), (_, b) in zip(stages, stages[1:])), "progress went back"
    # an update: the volume is not sent again, the features come from the service's cache
    stages.clear()
    again = engine.run(propagation(tumour_case, k=3), progress=lambda s, f: stages.append((s, f)))
    assert "sending the volume" not in [s for s, _ in stages]
    assert again.meta["cache"]["hits"] >= 1 and again.meta["cache"]["misses"] == first.meta["cache"]["misses"]
    # a new client (another Slicer) with the same volume finds it on the service too
    other = remote(service)
    stages.clear()
    other.run(propagation(tumour_case), progress=lambda s, f: stages.append((s, f)))
    assert "sending the volume" not in [s for s, _ in stages]
    # a wrong token: one clear sentence
    from BrainDiffSegService.client import ServiceError

    with pytest.raises(ServiceError, match="refused the token"):
        remote(service, token="wrong").run(propagation(tumour_case))


def test_two_clients_one_job_per_volume_others_queue_and_cancel(service, tumour_case):
    from BrainDiffSegService.client import ServiceError

    a, b = remote(service), remote(service)
    slow = a.submit(propagation(tumour_case, SLOW))
    wait_for(lambda: (slow.advance(time.monotonic() + 0.02), slow.job_id is not None)[1], what="the job submitted")
    with pytest.raises(ServiceError, match="busy with another job on this volume"):
        b.run(propagation(tumour_case, QUICK))
    other = b.submit(propagation(tumour_case, QUICK, seed=1))
    wait_for(lambda: (other.advance(time.monotonic() + 0.02), other.job_id is not None)[1], what="queued")
    other.advance(time.monotonic() + 0.02)
    wait_for(lambda: (other.advance(time.monotonic() + 0.02), "queued behind 1 job" in other.stage)[1],
             what="the second volume's job queued")
    slow.cancel()
    with pytest.raises(CancelledError):
        _drive(slow, timeout=60)
    response = _drive(other, timeout=120)
    assert response.arrays["labels"].shape == (64, 64, 24)


def test_tls_on_loopback_with_a_self_signed_certificate(tmp_path, tumour_case):
    from BrainDiffSegService.client import ServiceError
    from BrainDiffSegService.engines import ServiceEngine

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                           str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext",
                           "subjectAltName=IP:127.0.0.1"], capture_output=True, timeout=120)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a certificate: {made.stderr[-300:]}")
    service = start_service(tmp_path, "--certfile", str(cert), "--keyfile", str(key), scheme="https",
                            cafile=str(cert))
    try:
        health = ServiceEngine.remote(service.url, service.token, str(cert)).health()
        assert health["status"] == "ok"
        response = ServiceEngine.remote(service.url, service.token, str(cert)).run(propagation(tumour_case))
        assert response.arrays["labels"].any()
        with pytest.raises(ServiceError, match="is not trusted"):
            ServiceEngine.remote(service.url, service.token).health()
        with pytest.raises(ServiceError):  # plain http to the TLS port
            ServiceEngine.remote(service.url.replace("https", "http"), service.token).health(timeout=10)
    finally:
        service.stop()


# ------------------------------------------------------------------------------------------ a private service

def test_a_killed_local_service_gives_a_clear_message_and_the_next_job_starts_a_new_one(tumour_case):
    from BrainDiffSegService.client import ServiceUnavailable
    from BrainDiffSegService.engines import ServiceEngine

    engine = ServiceEngine.local(threads=1)
    try:
        job = engine.submit(propagation(tumour_case, SLOW))
        wait_for(lambda: (job.advance(time.monotonic() + 0.02), job.stage == "training classifier")[1],
                 timeout=120, what="the engine working")
        pid = engine.launcher.pid
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ServiceUnavailable, match=r"stopped unexpectedly \(exit code -9\); nothing was changed"):
            _drive(job, timeout=60)
        response = engine.run(propagation(tumour_case))
        assert response.arrays["labels"].any() and engine.launcher.pid != pid and engine.launcher.starts == 2
    finally:
        engine.close()
    assert engine.launcher.process is None


def test_a_private_service_stops_with_its_parent_or_when_asked(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(4)"])
    service = start_service(tmp_path, "--parent-pid", str(parent.pid))
    try:
        parent.wait(30)
        service.process.wait(30)  # within about a second of its parent
    finally:
        service.stop()
    service = start_service(tmp_path, "--allow-shutdown")
    try:
        status, body = request(service, "POST", "/shutdown", body=b"")
        assert status == 202 and body["status"] == "stopping"
        service.process.wait(30)
    finally:
        service.stop()
    assert service.process.returncode == 0


def test_the_launcher_reports_a_service_that_cannot_start(tmp_path):
    from BrainDiffSegService.client import ServiceError
    from BrainDiffSegService.launcher import LocalService

    broken = LocalService(sys.executable, extra_args=("--max-volumes", "not-a-number"))
    end = time.monotonic() + 120
    with pytest.raises(ServiceError, match=r"(?s)failed to start \(exit code 2\).*invalid int value"):
        while time.monotonic() < end:
            if broken.poll() is None:
                time.sleep(0.05)
    assert broken.process is None
    assert images_digest({"x": np.zeros(2)})  # (the module's helpers import without the service)


def test_a_token_that_starts_with_a_dash_works_and_generated_ones_never_do(tmp_path):
    from BrainDiffSegService.server import new_token

    assert not any(new_token().startswith("-") for _ in range(500))
    service = start_service(tmp_path, token="-starts-with-a-dash")
    try:
        assert request(service, "GET", "/health")[0] == 200
    finally:
        service.stop()
