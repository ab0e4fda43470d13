"""A CRI client on gRPC's C-core (PyPI's grpcio), driven by tests/grpc_clients.rs.

Generates the CRI stubs from the proto k8s-cri ships, then over the unix socket runs a pod
and a container with one volume through kelsond, and prints one JSON report of what came
back. Any failed call exits non-zero with the gRPC code and message. C-core sends the
percent-encoded socket path as :authority, which is what this client is here to prove.

Usage: cri_client.py SOCKET PROTO IMAGE CGROUP_PARENT LOG_DIR VOLUME_DIR
"""

import json
import os
import subprocess
import sys
import tempfile

import grpc

TIMEOUT = 60  # seconds, per call


def stubs(proto):
    out = tempfile.mkdtemp(prefix="kelson-cri-stubs-")
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", os.path.dirname(proto),
         f"--python_out={out}", f"--grpc_python_out={out}", os.path.basename(proto)],
        check=True,
    )
    sys.path.insert(0, out)
    import v1_pb2
    import v1_pb2_grpc
    return v1_pb2, v1_pb2_grpc


def main():
    socket, proto, image, cgroup_parent, log_dir, volume = sys.argv[1:7]
    pb, rpc = stubs(proto)
    channel = grpc.insecure_channel(f"unix://{socket}")
    rt = rpc.RuntimeServiceStub(channel)
    im = rpc.ImageServiceStub(channel)
    report = {}

    def call(name, fn, req):
        try:
            return fn(req, timeout=TIMEOUT)
        except grpc.RpcError as e:
            sys.exit(f"{name}: {e.code().name}: {e.details()}")

    v = call("Version", rt.Version, pb.VersionRequest())
    report["version"] = {"runtime_name": v.runtime_name, "runtime_api_version": v.runtime_api_version}
    images = call("ListImages", im.ListImages, pb.ListImagesRequest())
    report["images"] = [t for i in images.images for t in i.repo_tags]
    fs = call("ImageFsInfo", im.ImageFsInfo, pb.ImageFsInfoRequest())
    report["image_fs"] = [f.fs_id.mountpoint for f in fs.image_filesystems]

    pod_config = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="py", uid="uid-py", namespace="default"),
        hostname="py",
        log_directory=log_dir,
        linux=pb.LinuxPodSandboxConfig(cgroup_parent=cgroup_parent),
    )
    pod = call("RunPodSandbox", rt.RunPodSandbox,
               pb.RunPodSandboxRequest(config=pod_config)).pod_sandbox_id
    report["pod"] = pod
    ctr_config = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="main"),
        image=pb.ImageSpec(image=image),
        command=["/bin/sleep", "3600"],
        log_path="main.log",
        mounts=[pb.Mount(container_path="/data", host_path=volume)],
    )
    ctr = call("CreateContainer", rt.CreateContainer, pb.CreateContainerRequest(
        pod_sandbox_id=pod, config=ctr_config, sandbox_config=pod_config)).container_id
    call("StartContainer", rt.StartContainer, pb.StartContainerRequest(container_id=ctr))
    st = call("ContainerStatus", rt.ContainerStatus,
              pb.ContainerStatusRequest(container_id=ctr, verbose=True))
    report["container"] = {
        "id": ctr,
        "state": pb.ContainerState.Name(st.status.state),
        "info": json.loads(st.info["info"]),
    }
    pods = call("ListPodSandbox", rt.ListPodSandbox, pb.ListPodSandboxRequest())
    report["pods_running"] = [p.id for p in pods.items]
    call("StopPodSandbox", rt.StopPodSandbox, pb.StopPodSandboxRequest(pod_sandbox_id=pod))
    call("RemovePodSandbox", rt.RemovePodSandbox, pb.RemovePodSandboxRequest(pod_sandbox_id=pod))
    pods = call("ListPodSandbox", rt.ListPodSandbox, pb.ListPodSandboxRequest())
    report["pods_after"] = [p.id for p in pods.items]
    # A refusal must still come back as a gRPC status, not a reset stream.
    try:
        rt.ContainerStatus(pb.ContainerStatusRequest(container_id="not-an-id"), timeout=TIMEOUT)
        report["bad_id"] = "OK"
    except grpc.RpcError as e:
        report["bad_id"] = e.code().name
    print(json.dumps(report))


if __name__ == "__main__":
    main()
