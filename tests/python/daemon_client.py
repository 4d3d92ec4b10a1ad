#!/usr/bin/python3
"""A client of our own, in Python, for `storectl serve`'s gRPC socket.

Debian's python3-grpcio and python3-grpc-tools: the project's .proto files are
compiled here, at run time, into a temporary directory. Driven by
tests/daemon.rs (`python_client_drives_cri_and_images`), which starts the
daemon and a docker-registry with htpasswd and pushes the images.

Usage: daemon_client.py SOCKET PROTO_DIR SCENARIO_JSON
       daemon_client.py SOCKET PROTO_DIR events N
         (subscribe; print the first N events as JSON lines, `ready` first)

SCENARIO_JSON: {"cri_ref", "stream_ref", "user", "password", "registry",
"stream_blobs": {digest: size}}. Checks as it goes (an assertion failure exits
non-zero with the reason); prints one JSON line of figures at the end.
"""

import json
import os
import queue
import sys
import tempfile
import threading
import time

from grpc_tools import protoc
import grpc


def compile_protos(proto_dir, out):
    for f in ["storectl/v1/images.proto", "runtime/v1/api.proto"]:
        rc = protoc.main(["protoc", "-I" + proto_dir, "--python_out=" + out,
                          "--grpc_python_out=" + out, f])
        assert rc == 0, "protoc failed on %s" % f
    sys.path.insert(0, out)


def events(channel, n):
    from storectl.v1 import images_pb2 as pb, images_pb2_grpc as pbg
    stream = pbg.EventsStub(channel).Subscribe(pb.SubscribeRequest())
    # The call is up once its metadata arrived: only then is "ready" true.
    stream.initial_metadata()
    print("ready", flush=True)
    for i, e in enumerate(stream):
        kind = e.WhichOneof("kind")
        ev = getattr(e, kind)
        print(json.dumps({"kind": kind, "id": ev.id, "names": list(getattr(ev, "names", []))}), flush=True)
        if i + 1 >= n:
            break


def main():
    socket, proto_dir = sys.argv[1], sys.argv[2]
    out = tempfile.mkdtemp(prefix="storectl-pb-")
    compile_protos(proto_dir, out)
    from storectl.v1 import images_pb2 as pb, images_pb2_grpc as pbg
    from runtime.v1 import api_pb2 as cri, api_pb2_grpc as crig

    channel = grpc.insecure_channel("unix://" + socket)
    if sys.argv[3] == "events":
        return events(channel, int(sys.argv[4]))
    scenario = json.loads(sys.argv[3])
    images = pbg.ImagesStub(channel)
    events_stub = pbg.EventsStub(channel)
    kubelet = crig.ImageServiceStub(channel)
    figures = {}

    # Events, from before anything changes.
    seen_events = []
    subscription = events_stub.Subscribe(pb.SubscribeRequest())

    def collect():
        try:
            for e in subscription:
                seen_events.append(e)
        except grpc.RpcError:
            pass
    threading.Thread(target=collect, daemon=True).start()

    # ---- CRI, as kubelet would --------------------------------------------
    ref = scenario["cri_ref"]
    fs = kubelet.ImageFsInfo(cri.ImageFsInfoRequest())
    assert len(fs.image_filesystems) == 1, fs
    before_used = fs.image_filesystems[0].used_bytes.value
    assert fs.image_filesystems[0].timestamp > 0
    assert fs.image_filesystems[0].fs_id.mountpoint.startswith("/"), fs

    try:
        kubelet.PullImage(cri.PullImageRequest(image=cri.ImageSpec(image=ref)))
        raise AssertionError("a pull without auth from an htpasswd registry succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.UNAUTHENTICATED, (e.code(), e.details())
        assert "credentials required" in e.details(), e.details()

    auth = cri.AuthConfig(username=scenario["user"], password=scenario["password"])
    pulled = kubelet.PullImage(cri.PullImageRequest(
        image=cri.ImageSpec(image=ref), auth=auth,
        sandbox_config=cri.PodSandboxConfig()))
    image_id = pulled.image_ref
    assert image_id.startswith("sha256:") and len(image_id) == 71, image_id

    listed = kubelet.ListImages(cri.ListImagesRequest())
    mine = [i for i in listed.images if i.id == image_id]
    assert len(mine) == 1, listed
    assert ref in mine[0].repo_tags, mine[0]
    assert mine[0].size > 0
    assert any(d.startswith(ref.rsplit(":", 1)[0] + "@sha256:") for d in mine[0].repo_digests), mine[0]
    only = kubelet.ListImages(cri.ListImagesRequest(
        filter=cri.ImageFilter(image=cri.ImageSpec(image=ref))))
    assert [i.id for i in only.images] == [image_id], only

    status = kubelet.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref), verbose=True))
    assert status.image.id == image_id, status
    assert json.loads(status.info["info"])["imageSpec"]["rootfs"]["type"] == "layers"
    by_id = kubelet.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=image_id)))
    assert by_id.image.id == image_id
    missing = kubelet.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image="nope/none:1")))
    assert not missing.HasField("image"), missing

    fs = kubelet.ImageFsInfo(cri.ImageFsInfoRequest())
    assert fs.image_filesystems[0].used_bytes.value > before_used, fs
    assert fs.image_filesystems[0].inodes_used.value > 0, fs

    # ---- our Images service: the progress stream, credentials asked -------
    answers = queue.Queue()
    credential_requests = []

    def requests():
        yield pb.PullClientMessage(request=pb.PullRequest(reference=scenario["stream_ref"]))
        while True:
            a = answers.get()
            if a is None:
                return
            yield pb.PullClientMessage(credentials=a)

    arrivals = []
    ticks = []
    results = []
    failures = []
    last_layers = None
    for m in images.Pull(requests()):
        now = time.monotonic()
        kind = m.WhichOneof("msg")
        arrivals.append((now, kind))
        if kind == "credentials":
            credential_requests.append(m.credentials)
            answers.put(pb.CredentialsAnswer(id=m.credentials.id, username=scenario["user"],
                                             password=scenario["password"]))
        elif kind == "progress":
            assert not results, "progress after the result"
            ticks.append(m.progress.tick)
            assert m.progress.interval_ms == 100
        elif kind == "result":
            results.append(m.result)
            last_layers = m.result.last.layers
        elif kind == "error":
            failures.append(m.error.message)
    answers.put(None)
    assert not failures, failures
    assert len(results) == 1, "one result at the end, got %d" % len(results)
    assert arrivals[-1][1] == "result", arrivals[-1]
    assert len(credential_requests) == 1, credential_requests
    assert credential_requests[0].registry == scenario["registry"], credential_requests[0]
    assert credential_requests[0].realm == "storectl-test", credential_requests[0]
    # One progress message per 100 ms tick of the server, none skipped.
    assert ticks == list(range(1, len(ticks) + 1)), ticks
    assert len(ticks) >= 2, "a pull this size takes more than one tick: %s" % ticks
    # Per-layer totals: every blob of the manifest, complete, at its size.
    want = scenario["stream_blobs"]
    got = {l.id: (l.status, l.current, l.total) for l in last_layers}
    assert len(last_layers) == len(want), (got, want)
    totals = sorted(t for (_, _, t) in got.values())
    assert totals == sorted(want.values()), (totals, want)
    for lid, (st, cur, tot) in got.items():
        assert st == "complete" and cur == tot, (lid, st, cur, tot)
    stream_id = results[0].id
    gaps = [b[0] - a[0] for a, b in zip(arrivals, arrivals[1:])
            if a[1] == "progress" and b[1] == "progress"]
    figures["progress_messages"] = len(ticks)
    if gaps:
        gaps.sort()
        figures["gap_ms_median"] = round(1000 * gaps[len(gaps) // 2], 1)
        figures["gap_ms_max"] = round(1000 * gaps[-1], 1)

    # ---- malformed and oversized messages: clear errors, still serving ----
    raw = channel.unary_unary("/storectl.v1.Images/List",
                              request_serializer=None, response_deserializer=None)
    try:
        raw(b"\xff\xff\xff\xff")
        raise AssertionError("garbage was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INTERNAL, (e.code(), e.details())
        assert "decode" in e.details().lower(), e.details()
        figures["malformed"] = e.details()

    def big():
        yield pb.LoadClientMessage(request=pb.LoadRequest())
        yield pb.LoadClientMessage(data=b"x" * (9 << 20))
    try:
        for _ in images.Load(big()):
            pass
        raise AssertionError("a 9 MiB message was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (e.code(), e.details())
        assert "too large" in e.details(), e.details()
        figures["oversized"] = e.details()
    ids = [i.id for i in images.List(pb.ListRequest()).images]
    assert stream_id in ids and image_id[7:] in ids, ids

    # ---- removal, idempotent ----------------------------------------------
    kubelet.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)))
    kubelet.RemoveImage(cri.RemoveImageRequest(image=cri.ImageSpec(image=image_id)))
    left = [i.id for i in kubelet.ListImages(cri.ListImagesRequest()).images]
    assert image_id not in left, left

    # Events: both images added, the CRI one removed (in that order).
    deadline = time.monotonic() + 10
    def kinds():
        return [(e.WhichOneof("kind"), getattr(e, e.WhichOneof("kind")).id) for e in seen_events]
    def complete():
        k = kinds()
        return ("image_removed", image_id[7:]) in k and any(kind == "layer_removed" for kind, _ in k)
    while time.monotonic() < deadline and not complete():
        time.sleep(0.05)
    k = kinds()
    assert ("image_added", image_id[7:]) in k, k
    assert ("image_added", stream_id) in k, k
    assert k.index(("image_added", image_id[7:])) < k.index(("image_removed", image_id[7:])), k
    assert any(kind == "layer_added" for kind, _ in k), k
    assert any(kind == "layer_removed" for kind, _ in k), k
    figures["events"] = len(k)
    subscription.cancel()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
